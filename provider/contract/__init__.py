"""The contract both sides speak: HRESULTs, VSS types and methods, the creation state
machine, and what a LIO target answers for a LUN. It imports nothing else of the project."""
