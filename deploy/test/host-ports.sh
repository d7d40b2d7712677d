# Sourced by the deploy tests: `free_host_ports PORT...` keeps the kernel from handing the
# given fixed ports out as ephemeral ports (39092 lies in Linux's ephemeral range, and an
# earlier test's connection on it, or its 60 s TIME_WAIT, makes a bind there fail), then
# waits up to 75 s for any leftover socket on them to go.
free_host_ports() {
  local ports=("$@") pattern busy
  (IFS=,; sysctl -q -w "net.ipv4.ip_local_reserved_ports=${ports[*]}") 2>/dev/null || true
  pattern=":($(IFS='|'; echo "${ports[*]}"))\$"
  for _ in $(seq 150); do
    busy=$(ss -Htan | awk '{print $4}' | grep -cE "$pattern" || true)
    [ "$busy" = 0 ] && return 0
    sleep 0.5
  done
  echo "host ports still in use after 75 s:" >&2
  ss -Htanp | awk '{print $4, $NF}' | grep -E "$pattern" >&2 || true
  return 1
}
