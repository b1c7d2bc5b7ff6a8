"""contract/medserve_contract"""
