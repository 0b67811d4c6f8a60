"""Test hosts on one machine: network namespaces on a private bridge, whose links a test can cut.

``HostNetwork`` makes a bridge ``jrb<pid>`` with the address ``10.213.0.1/24`` in the root
namespace, where the servers run, and one namespace per host (``jrn<pid><letter>``), joined to
the bridge by a veth pair, with the address ``10.213.0.<n+2>``. A cut puts a token-bucket
filter that passes nothing on both ends of a host's veth pair: packets vanish in both
directions, as on a pulled cable or a partition (no error reaches either side, so both notice
only through their own time-outs), and removing it restores the link. Everything is named
after the test run's pid, and ``sweep_leftovers`` removes what a killed run left behind.
Needs root and iproute2; ``unavailable_reason`` says why not.
"""

import os
import shutil
import socket
import subprocess
import sys

PREFIX_NAMESPACE = "jrn"
PREFIX_BRIDGE = "jrb"
PREFIX_VETH = "jrv"
SERVER_ADDRESS = "10.213.0.1"
#: A tbf that lets nothing through: a 1-byte bucket holds no packet, and a 1-byte queue
#: drops every packet that waits.
BLACKHOLE = ["tbf", "rate", "8bit", "burst", "1", "limit", "1"]


def ip(*argv, namespace=None):
    command = ["ip", *(["-n", namespace] if namespace else []), *argv]
    subprocess.run(command, check=True, capture_output=True, timeout=30)


def in_namespace(namespace, *argv):
    return ["ip", "netns", "exec", namespace, *argv]


def unavailable_reason():
    """Why this machine cannot make test hosts, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not (shutil.which("ip") and shutil.which("tc")):
        return "iproute2 (ip, tc) is not installed"
    return None


def sweep_leftovers():
    """Delete namespaces and links of earlier runs whose process is gone (a killed run)."""
    listing = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True)
    for line in listing.stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith((PREFIX_BRIDGE, PREFIX_VETH)) and _owner_gone(name[3:]):
            subprocess.run(["ip", "link", "del", name], capture_output=True)
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    for line in namespaces.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(PREFIX_NAMESPACE) and _owner_gone(name[3:]):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _owner_gone(suffix):
    digits = "".join(c for c in suffix if c.isdigit())
    return bool(digits) and not os.path.exists(f"/proc/{digits}")


class HostNetwork:
    """``count`` hosts (namespaces) on one bridge with the servers' address."""

    def __init__(self, count):
        self.tag = str(os.getpid())
        self.bridge = PREFIX_BRIDGE + self.tag
        self.hosts = [PREFIX_NAMESPACE + self.tag + chr(ord("a") + n) for n in range(count)]
        self.cut_hosts = set()

    def veth(self, n, end):
        """The root (``"r"``) or namespace (``"n"``) end of host ``n``'s link."""
        return f"{PREFIX_VETH}{self.tag}{n}{end}"

    def address(self, n):
        return f"10.213.0.{n + 2}"

    def create(self):
        sweep_leftovers()
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", SERVER_ADDRESS + "/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for n, namespace in enumerate(self.hosts):
            ip("netns", "add", namespace)
            ip("link", "add", self.veth(n, "r"), "type", "veth", "peer", "name",
               self.veth(n, "n"))
            ip("link", "set", self.veth(n, "n"), "netns", namespace)
            ip("link", "set", self.veth(n, "r"), "master", self.bridge)
            ip("link", "set", self.veth(n, "r"), "up")
            ip("addr", "add", self.address(n) + "/24", "dev", self.veth(n, "n"),
               namespace=namespace)
            ip("link", "set", self.veth(n, "n"), "up", namespace=namespace)
            ip("link", "set", "lo", "up", namespace=namespace)
        return self

    def cut(self, n):
        """Drop every packet to and from host ``n``."""
        subprocess.run(["tc", "qdisc", "add", "dev", self.veth(n, "r"), "root", *BLACKHOLE],
                       check=True, capture_output=True)
        subprocess.run(in_namespace(self.hosts[n], "tc", "qdisc", "add", "dev",
                                    self.veth(n, "n"), "root", *BLACKHOLE),
                       check=True, capture_output=True)
        self.cut_hosts.add(n)

    def restore(self, n):
        subprocess.run(["tc", "qdisc", "del", "dev", self.veth(n, "r"), "root"],
                       check=True, capture_output=True)
        subprocess.run(in_namespace(self.hosts[n], "tc", "qdisc", "del", "dev",
                                    self.veth(n, "n"), "root"), check=True, capture_output=True)
        self.cut_hosts.discard(n)

    def reaches(self, n, port, timeout=1.0):
        """Whether host ``n`` can open a TCP connection to the servers' address on ``port``."""
        probe = (f"import socket; socket.create_connection(({SERVER_ADDRESS!r}, {port}), "
                 f"timeout={timeout}).close()")
        result = subprocess.run(in_namespace(self.hosts[n], sys.executable, "-c", probe),
                                capture_output=True, timeout=timeout + 10)
        return result.returncode == 0

    def destroy(self):
        for n, namespace in enumerate(self.hosts):
            subprocess.run(["ip", "link", "del", self.veth(n, "r")], capture_output=True)
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def listening_on(port):
    """Whether something in the root namespace accepts on the servers' address and ``port``."""
    try:
        socket.create_connection((SERVER_ADDRESS, port), timeout=1).close()
        return True
    except OSError:
        return False


def serve_redis_on_bridge(redis_url):
    """Make a private Redis (tests/helpers.py ``PrivateRedis``) also accept the hosts."""
    import redis
    client = redis.Redis.from_url(redis_url)
    client.config_set("protected-mode", "no")
    client.config_set("bind", f"127.0.0.1 {SERVER_ADDRESS}")
    client.close()


def serve_postgres_on_bridge(cluster):
    """Make a private cluster (tests/helpers.py ``PrivatePostgres``, initialised) accept the
    hosts: trust on the bridge's subnet, and listening on its address after the restart."""
    with open(os.path.join(cluster.dir, "data", "pg_hba.conf"), "a") as hba:
        hba.write("host all all 10.213.0.0/24 trust\n")
    cluster.listen = f"127.0.0.1,{SERVER_ADDRESS}"
    cluster.stop()
    cluster.start()
