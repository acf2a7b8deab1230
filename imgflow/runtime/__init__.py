"""Processes and the machine: CPU time, memory, the network, worker pools, the end of every process, stop requests and errors."""
