#!/usr/bin/env bash
# Linux installers made from the app bundle:
#
#   packaging/linux/build_packages.sh [cpu|cuda|vulkan]
#     -> dist/moe-chat[-<variant>]_<version>_amd64.deb       installs under /opt/moe-chat
#     -> dist/moe-chat[-<variant>]-<version>-linux-x86_64.tar.gz   the portable bundle
#
# The CPU variant's packages are plain "moe-chat"; GPU variants carry their backend in the
# name and replace one another, so one is installed at a time.
set -euo pipefail
cd "$(dirname "$0")/../.."

variant="${1:-cpu}"
python="${PYTHON:-python3}"
version="$("$python" packaging/project_info.py version)"
metainfo=packaging/linux/io.github.moechat.MoEChat.metainfo.xml
desktop=packaging/linux/io.github.moechat.MoEChat.desktop
if ! grep -q "<release version=\"$version\"" "$metainfo"; then
  echo "$metainfo has no <release> for version $version (pyproject.toml): add one" >&2
  exit 1
fi

bash packaging/build_bundle.sh "$variant"
bundle="build/dist-$variant/moe-chat"
name=moe-chat; [[ "$variant" == cpu ]] || name="moe-chat-$variant"
mkdir -p dist

# -- portable tarball ----------------------------------------------------------------------
tarball="dist/$name-$version-linux-x86_64.tar.gz"
tar -C "build/dist-$variant" -czf "$tarball" moe-chat
echo "tarball: $tarball ($(du -h "$tarball" | cut -f1))"

# -- .deb ----------------------------------------------------------------------------------
# The system libraries the bundle links to but does not ship (Qt's xcb and wayland libraries,
# the GL stack, fontconfig, the C++ runtime…), by package: packaging/linux/system-libs.txt.
mapfile -t depends < <(grep -v '^#' packaging/linux/system-libs.txt | awk -v variant="$variant" '
  NF == 0 { next }
  $1 !~ /:/ { print $1; next }
  { split($1, part, ":"); if (part[1] == variant && part[2] != "-") print part[2] }')
root="build/deb-$variant"
rm -rf "$root"
mkdir -p "$root/DEBIAN" "$root/opt" "$root/usr/bin" "$root/usr/share/applications" \
  "$root/usr/share/metainfo" "$root/usr/share/icons" "$root/usr/share/doc/$name"
cp -a "$bundle" "$root/opt/moe-chat"
ln -s /opt/moe-chat/moe-chat "$root/usr/bin/moe-chat"
install -m 644 "$desktop" "$root/usr/share/applications/"
install -m 644 "$metainfo" "$root/usr/share/metainfo/"
cp -r build/icons/hicolor "$root/usr/share/icons/"
cat > "$root/usr/share/doc/$name/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: MoE Chat

Files: *
License: Apache-2.0
Comment: MoE Chat bundles Python, Qt for Python (LGPL-3.0), NumPy (BSD-3-Clause),
 llama.cpp (MIT) and huggingface-hub (Apache-2.0); their licence files are under
 /opt/moe-chat/_internal/*.dist-info.
COPYRIGHT
find "$root" -type d -exec chmod 755 {} +

conflicts=""
for other in moe-chat moe-chat-cuda moe-chat-vulkan; do
  [[ "$other" == "$name" ]] || conflicts+="${conflicts:+, }$other"
done
{
  echo "Package: $name"
  echo "Version: $version"
  echo "Architecture: amd64"
  echo "Maintainer: The MoE Chat developers <moe-chat@users.noreply.invalid>"
  echo "Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)"
  echo "Depends: $(IFS=,; echo "${depends[*]}" | sed 's/,/, /g')"
  echo "Conflicts: $conflicts"
  echo "Replaces: $conflicts"
  [[ "$variant" == cpu ]] || echo "Provides: moe-chat"
  echo "Section: utils"
  echo "Priority: optional"
  echo "Description: chat with a large Mixture-of-Experts model on your own computer"
  echo " MoE Chat recommends the MoE model and quantization that will run well on this"
  echo " machine, downloads it safely and chats with it locally, keeping the weights"
  echo " that matter most in GPU memory. Engine: llama.cpp, $variant build."
} > "$root/DEBIAN/control"

deb="dist/${name}_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "deb: $deb ($(du -h "$deb" | cut -f1))"
