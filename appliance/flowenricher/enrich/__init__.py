"""Enrichment: ASN/org and GeoIP, BGP from GoBGP's RIB, reverse DNS, SNMP interface
names, direction and networks (see base.py for the contract every stage keeps)."""
