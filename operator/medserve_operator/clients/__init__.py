"""operator/medserve_operator/clients"""
