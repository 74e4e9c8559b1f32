# bpfcompat with everything a matrix run needs: QEMU, mmdebstrap, the Debian archive keyring
# and the package, installed by scripts/install.sh (the script the GitHub Action runs and the
# test suite checks). Kernels and the guest image are fetched and built on first use into
# /root/.cache/bpfcompat: mount a volume there to keep them. See docs/ci.md.
#
#   docker build -t bpfcompat .
#   docker run --rm --device /dev/kvm -v "$PWD:/work" -v bpfcompat-cache:/root/.cache/bpfcompat \
#     bpfcompat matrix run build/bpf --out-dir out
#
# Without --device /dev/kvm the guests run under TCG: the same results, slower.
FROM debian:bookworm-slim

COPY pyproject.toml README.md kernels.yaml /src/bpfcompat/
COPY src /src/bpfcompat/src
COPY scripts/install.sh /src/bpfcompat/scripts/install.sh
RUN /src/bpfcompat/scripts/install.sh --prefix /opt/bpfcompat --bin-dir /usr/local/bin \
 && rm -rf /src/bpfcompat /root/.cache/pip /var/lib/apt/lists/*

WORKDIR /work
ENTRYPOINT ["bpfcompat"]
CMD ["--help"]
