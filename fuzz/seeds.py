#!/usr/bin/env python3
"""Writes the fuzz seeds in corpus/: one runtime invocation per file (CNI_*
environment lines, an empty line, stdin). Run again after changing it."""
import json, os

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")
VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]

def prev(v, v6=True):
    ips = [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2}]
    if v6:
        ips.append({"address": "fd00:244:1::5/64", "gateway": "fd00:244:1::1", "interface": 2})
    if v < "1.0.0":
        for ip in ips:
            ip["version"] = "6" if ":" in ip["address"] else "4"
    r = {
        "cniVersion": v,
        "interfaces": [
            {"name": "cni0", "mac": "36:0d:e7:d8:ac:5c"},
            {"name": "veth35453180", "mac": "5e:97:be:86:bd:94"},
            {"name": "eth0", "mac": "62:81:cf:af:92:49", "sandbox": "/run/netns/pod-a", "mtu": 1450},
        ],
        "ips": ips,
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.96.0.0/12", "gw": "10.244.1.1"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
    }
    if v == "1.1.0":
        r["routes"].append({"dst": "::/0", "mtu": 1400, "advmss": 1360, "priority": 10, "table": 100, "scope": 0})
    return r

def env(cmd, cid="3f1b2c4d5e6f", ifname="eth0", netns="/run/netns/pod-a", args=None):
    e = [f"CNI_COMMAND={cmd}", f"CNI_CONTAINERID={cid}", f"CNI_NETNS={netns}", f"CNI_IFNAME={ifname}", "CNI_PATH=/opt/cni/bin"]
    e.append("CNI_ARGS=" + (args if args is not None else "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_UID=u-1;K8S_POD_INFRA_CONTAINER_ID=3f1b"))
    return e

def conf(v, **extra):
    c = {"cniVersion": v, "name": "cbr0", "type": "weir"}
    c.update(extra)
    return c

seeds = {}
for v in VERSIONS:
    seeds[f"add-{v}"] = (env("ADD"), conf(v, prevResult=prev(v), failurePolicy="Fail", attach="tc"))
    seeds[f"del-{v}"] = (env("DEL"), conf(v, prevResult=prev(v)))
    seeds[f"check-{v}"] = (env("CHECK"), conf(v, prevResult=prev(v, v6=False)))
    seeds[f"version-{v}"] = (["CNI_COMMAND=VERSION"], {"cniVersion": v})
seeds["gc-1.1.0"] = (["CNI_COMMAND=GC", "CNI_PATH=/x"], conf("1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "a.dup1", "ifname": "eth0"}], "cni.dev/attachments": None}))
seeds["status-1.1.0"] = (["CNI_COMMAND=STATUS"], conf("1.1.0", stateDir="/var/lib/weir", bpfRoot="/sys/fs/bpf/weir"))
seeds["add-all-keys"] = (env("ADD", cid="a_dup1", ifname="net1"), conf("1.1.0", prevResult=prev("1.1.0"), failurePolicy="Ignore", stateDir="/run/weir", bpfRoot="/sys/fs/bpf/w", attach="tcx", logFile="/var/log/weir.log", logLevel="debug", faultInjection={"failAt": "rename", "pauseAt": "attach", "pauseFifo": "/run/f"}, runtimeConfig={"portMappings": []}))
seeds["add-no-prefix"] = (env("ADD"), conf("1.0.0", prevResult={"ips": [{"address": "10.0.0.2"}], "interfaces": [{"name": "eth0", "sandbox": "/x"}]}))
seeds["add-dotdot-name"] = (env("ADD"), dict(conf("1.0.0", prevResult=prev("1.0.0")), name=".."))
seeds["add-long-id"] = (env("ADD", cid="7" * 260), conf("1.0.0", prevResult=prev("1.0.0")))
seeds["add-odd-args"] = (env("ADD", args="K8S_POD_NAME=a;;FOO=bar=baz;=x;K8S_POD_NAMESPACE="), conf("1.0.0", prevResult=prev("1.0.0")))
seeds["del-no-netns"] = ([l for l in env("DEL") if not l.startswith("CNI_NETNS")], conf("0.4.0", prevResult={"ips": [{"address": "garbage"}]}))
seeds["add-bad-ifname"] = (env("ADD", ifname="this-is-sixteen!"), conf("1.0.0", prevResult=prev("1.0.0")))
seeds["add-null-lists"] = (env("ADD"), conf("1.0.0", prevResult={"interfaces": None, "ips": None, "routes": None, "dns": None}))

os.makedirs(OUT, exist_ok=True)
for name, (e, c) in seeds.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(("\n".join(e) + "\n\n").encode() + json.dumps(c).encode())
with open(os.path.join(OUT, "not-json"), "wb") as f:
    f.write(b"CNI_COMMAND=ADD\nCNI_CONTAINERID=c\nCNI_NETNS=/n\nCNI_IFNAME=eth0\n\n{\"cniVersion\":")
print(f"{len(seeds) + 1} seeds in {OUT}")
