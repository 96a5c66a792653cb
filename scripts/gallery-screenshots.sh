#!/usr/bin/env bash
# Screenshots of a gallery page as a reader sees it: headless Chromium at a desktop width (1400 px)
# and a phone width (390 px), reduced to 256-colour PNGs. Needs Debian's `chromium`.
#   scripts/gallery-screenshots.sh GALLERY_DIR OUT_PREFIX [Y0:Y1 NAME]...
# writes OUT_PREFIX-1400.png (the top 1,500 px), OUT_PREFIX-390.png (the top 1,100 px) and, for
# each Y0:Y1 NAME, OUT_PREFIX-NAME.png: rows Y0 to Y1 of the page at 1400 px.
# docs/img/gallery-*.png were made with:
#   uv run lh execute docs/img/gallery-demo.yaml --store /tmp/demo-store
#   uv run lh promote docs/img/gallery-demo.yaml --store /tmp/demo-store --outdir /tmp/demo-gallery
#   scripts/gallery-screenshots.sh /tmp/demo-gallery docs/img/gallery 5120:6700 normal-crossing
set -euo pipefail
gallery=$(cd "$1" && pwd)
out=$2
shift 2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
shot() {  # width height file
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
        --window-size="$1,$2" --screenshot="$3" "file://$gallery/index.html" 2>/dev/null
}
shot 1400 1500 "$tmp/top-1400.png"
shot 390 1100 "$tmp/top-390.png"
crops=("$@")
if [ ${#crops[@]} -gt 0 ]; then
    shot 1400 9000 "$tmp/tall.png"  # tall enough that the lazily loaded plots below the fold load
fi
uv run python - "$tmp" "$out" "${crops[@]}" <<'EOF'
import sys
from PIL import Image

tmp, out, crops = sys.argv[1], sys.argv[2], sys.argv[3:]
small = lambda im: im.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
small(Image.open(f"{tmp}/top-1400.png")).save(f"{out}-1400.png", optimize=True)
small(Image.open(f"{tmp}/top-390.png")).save(f"{out}-390.png", optimize=True)
for rows, name in zip(crops[::2], crops[1::2]):
    y0, y1 = map(int, rows.split(":"))
    small(Image.open(f"{tmp}/tall.png").crop((0, y0, 1400, y1))).save(f"{out}-{name}.png", optimize=True)
EOF
ls -l "$out"-*.png
