"""Host-side static analysis of compiled BPF objects.

Booting a kernel tells *that* an object fails there; reading the object on the host tells
*why* in the user's terms ("calls bpf_loop, which 5.15 does not have") and predicts the result
on kernels nobody booted. This package holds the facts that reasoning needs (which release
introduced each helper, type, kfunc and ISA feature, and what libbpf rewrites at load time) as
plain data with a small loader, so it stays importable without a VM, root or a BPF toolchain.
"""
