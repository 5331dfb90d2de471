#!/usr/bin/env bash
# The iperf3 image of bench/network.py, flotilla-test/iperf3:1: Debian's
# iperf3 package (with libiperf0 and libsctp1) and the libraries it links
# from this machine (the same Debian release), on busybox's tools. Made
# from Debian packages with apt-get download and docker import: no registry.
# Idempotent; needs root and a running engine (make docker).
set -euo pipefail

IMAGE=flotilla-test/iperf3:1
RECIPE=1        # bump when the way the image is made changes
recipe=$(docker image inspect -f '{{ index .Config.Labels "flotilla.test.recipe" }}' "$IMAGE" \
    2>/dev/null || true)
[ "$recipe" = "$RECIPE" ] && exit 0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get download -qq -o APT::Sandbox::User=root iperf3 libiperf0 libsctp1
mkdir -p root/bin root/tmp
for deb in ./*.deb; do
    dpkg-deb -x "$deb" root
done
# What iperf3 links that the packages do not carry (libc, libssl, the loader).
LD_LIBRARY_PATH=root/usr/lib/x86_64-linux-gnu ldd root/usr/bin/iperf3 \
    | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' \
    | while read -r lib; do
        [ -e "root$lib" ] && continue
        case "$lib" in root/*) continue ;; esac
        mkdir -p "root$(dirname "$lib")"
        cp -L "$lib" "root$lib"
    done
cp /bin/busybox root/bin/
for c in sh echo sleep cat ls kill true; do ln -s busybox "root/bin/$c"; done
ln -s ../usr/bin/iperf3 root/bin/iperf3
tar -C root -c . | docker import -c 'ENV PATH=/bin:/usr/bin' \
    -c "LABEL flotilla.test.recipe=$RECIPE" -c 'CMD ["iperf3", "-s"]' - "$IMAGE" >/dev/null
docker run --rm "$IMAGE" iperf3 --version | head -1
