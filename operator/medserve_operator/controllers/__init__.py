"""operator/medserve_operator/controllers"""
