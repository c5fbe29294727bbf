"""What a cell costs besides wall time.

The cost model (FLOPs/bytes per call, device peaks), peak memory, NVML energy and the environment
fingerprint.
"""
