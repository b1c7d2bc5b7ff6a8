"""operator/medserve_operator/tools"""
