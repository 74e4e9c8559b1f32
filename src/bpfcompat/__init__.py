"""bpfcompat: on which kernels does this BPF object load, verify and attach, and why not."""

__version__ = "0.1.0"
