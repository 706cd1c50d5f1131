"""The encrypted-address gateway (frontd/huangkunbin protocol): secrets, ciphers, replies."""
