# Shared helpers for scripts/*. Sourced, not run.

# The cgroup v2 mount point (on hybrid hosts /sys/fs/cgroup/unified).
cgroup2_root() {
  if [ -n "${GANNET_TEST_CGROUP2:-}" ]; then echo "$GANNET_TEST_CGROUP2"; return; fi
  findmnt -n -t cgroup2 -o TARGET | head -n 1
}

bpffs_mounted() { [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" = "bpf_fs" ]; }

# If bpffs was mounted by us (it was not before) and holds nothing but the kernel's own
# iterators, unmount it again so the machine is left as it was found.
unmount_bpffs_if_ours() {
  local was_mounted=$1
  if [ "$was_mounted" = no ] && bpffs_mounted; then
    local left
    left=$(find /sys/fs/bpf -mindepth 1 -not -name maps.debug -not -name progs.debug | head -n 5)
    if [ -z "$left" ]; then
      umount /sys/fs/bpf
    else
      echo "warning: /sys/fs/bpf still holds: $left" >&2
    fi
  fi
}
