#!/usr/bin/env bash
# The wheels a lent GPU machine lacks for the lmfusion stages (prepare, encode-latents, train, sample,
# evaluate --suite shapes, export), for Python 3.12 on x86-64, into .whl/ (kept out of git through
# .git/info/exclude). Run here, then name `.whl` in the device call's `carry`; scripts/gpu_shape_scale.sh
# installs them. pycocoevalcap's wheel (104 MB: SPICE, METEOR and CoreNLP jars, METEOR's paraphrase
# table) is over the 64 MiB a call may carry; its Python scorers need none of them (the PTB tokenizer
# falls back to lmfusion's pure-Python one without java), so they are dropped, RECORD included.
set -euo pipefail
DEST=${DEST:-.whl}
mkdir -p "$DEST"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" diffusers==0.42.1 webdataset==1.0.2 braceexpand==0.1.7 pycocoevalcap==1.2
python3 - "$DEST" <<'PYEOF'
import pathlib, sys, zipfile
for src in pathlib.Path(sys.argv[1]).glob("pycocoevalcap-*.whl"):
    drop = lambda name: name.endswith(".jar") or name.startswith("pycocoevalcap/meteor/data/")  # noqa: E731
    tmp = src.with_suffix(".tmp")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if drop(info.filename):
                continue
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line + b"\n" for line in data.splitlines() if not drop(line.split(b",")[0].decode()))
            zout.writestr(info, data)
    tmp.replace(src)
PYEOF
du -ch "$DEST"/*.whl | tail -n 1
