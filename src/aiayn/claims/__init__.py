"""The paper's claims measured on this machine: Table 1 (complexity), Table 2 (compare), Table 3 (sweep)."""
