"""operator/medserve_operator/kit"""
