"""BGP blackholing: the safety policy, the persisted state and the one manager that
announces and withdraws (DESIGN §1, §5)."""
