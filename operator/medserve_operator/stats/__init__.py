"""operator/medserve_operator/stats"""
