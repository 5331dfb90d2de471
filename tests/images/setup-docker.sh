#!/usr/bin/env bash
# Make sure a Docker engine runs on this machine and the test images exist.
# Idempotent. Installs Debian's docker.io and busybox-static, and what the
# nodes' networks need (nftables, wireguard-go, wireguard-tools), when
# missing (needs root), starts dockerd without systemd when it is not running, and
# builds the images tests use from Debian packages (no registry needed).
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
if ! command -v dockerd >/dev/null || [ ! -x /bin/busybox ]; then
    apt-get update -qq
    apt-get install -y -qq docker.io busybox-static >/dev/null
fi

# What the nodes' networks need: nftables (virtual IPs) and user-space
# WireGuard (encrypted networks between hosts: the kernel may have none).
# Without recommends: wireguard-tools recommends a kernel module package.
if ! command -v wireguard-go >/dev/null || ! command -v wg >/dev/null \
        || ! [ -x /usr/sbin/nft ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nftables wireguard-go wireguard-tools \
        >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl start docker
    else
        nohup dockerd --host unix:///var/run/docker.sock >/var/log/dockerd.log 2>&1 &
    fi
    for _ in $(seq 120); do
        docker info >/dev/null 2>&1 && break
        sleep 0.5
    done
    docker info >/dev/null
fi

if ! docker image inspect flotilla-test/busybox:1 >/dev/null 2>&1; then
    root=$(mktemp -d)
    mkdir -p "$root/bin" "$root/tmp" "$root/www"
    cp /bin/busybox "$root/bin/"
    for c in sh echo sleep httpd ls cat wget nc true false test touch kill rm mkdir date; do
        ln -s busybox "$root/bin/$c"
    done
    echo "flotilla test image" > "$root/www/index.html"
    tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' - flotilla-test/busybox:1 >/dev/null
    rm -rf "$root"
fi
docker run --rm flotilla-test/busybox:1 true

# Two versions of a small web service with a HEALTHCHECK, and a version whose
# healthcheck never passes (rolling update and rollback tests). Like a real
# web server each stops on SIGTERM (httpd alone, as PID 1, would ignore it
# and wait out the stop grace period). A check may take 5 s and fail twice
# without the container turning unhealthy: a loaded machine (a test lane
# on 2 cores) runs the probe slowly, and only the bad image should fail.
# The label tells an image built by an older recipe, which is built again.
WEB_RECIPE=3
web_image() {
    tag=$1 body=$2 health=$3
    recipe=$(docker image inspect -f '{{ index .Config.Labels "flotilla.test.recipe" }}' \
        "flotilla-test/web:$tag" 2>/dev/null || true)
    [ "$recipe" = "$WEB_RECIPE" ] && return
    docker build -q -t "flotilla-test/web:$tag" - >/dev/null <<EOF
FROM flotilla-test/busybox:1
LABEL flotilla.test.recipe=$WEB_RECIPE
RUN mkdir -p /www && echo "$body" > /www/index.html && echo ok > /www/health
HEALTHCHECK --interval=1s --timeout=5s --retries=3 CMD wget -q -O /dev/null http://127.0.0.1$health || exit 1
CMD ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"]
EOF
}
web_image 1 "web v1" /health
web_image 2 "web v2" /health
web_image bad "web bad" /missing
echo "docker ready: $(docker version --format '{{.Server.Version}}')"
