#!/bin/sh
# Builds a small Linux image from Debian's busybox-static (an OCI image layout: one gzipped
# tar layer with /bin/busybox and its applets) and pushes it with skopeo.
#   usage: ./busybox-image.sh 127.0.0.1:5000/busybox:1
# Needs: busybox-static, skopeo, tar, gzip, sha256sum (Debian: apt-get install -y busybox-static skopeo).
set -eu
ref=${1:?usage: $0 REGISTRY/REPOSITORY:TAG}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/bin" "$work/root/tmp" "$work/layout/blobs/sha256"
chmod 1777 "$work/root/tmp"
cp /bin/busybox "$work/root/bin/busybox"
for applet in sh echo cat sleep wget ls date hostname id; do
  ln -s busybox "$work/root/bin/$applet"
done
# A reproducible layer: sorted names, fixed owner and time, no gzip name or time.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/root" -cf "$work/layer.tar" .
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -c "$work/layer.tar" > "$work/layer.tar.gz"

blob() { # FILE -> "DIGEST SIZE", stored in the layout
  d=$(sha256sum "$1" | cut -d' ' -f1)
  cp "$1" "$work/layout/blobs/sha256/$d"
  echo "$d $(stat -c %s "$1")"
}
case $(uname -m) in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
set -- $(blob "$work/layer.tar.gz"); layer=$1 layer_size=$2
printf '{"architecture":"%s","os":"linux","config":{"Cmd":["sh"],"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
  "$arch" "$diff_id" > "$work/config.json"
set -- $(blob "$work/config.json"); config=$1 config_size=$2
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
  "$config" "$config_size" "$layer" "$layer_size" > "$work/manifest.json"
set -- $(blob "$work/manifest.json"); manifest=$1 manifest_size=$2
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
  "$manifest" "$manifest_size" > "$work/layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"
skopeo --insecure-policy copy --dest-tls-verify=false "oci:$work/layout:latest" "docker://$ref"
