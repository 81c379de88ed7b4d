# Sourced on the GPU machine from the repository root: moves to a copy of the last commit in
# /tmp/twinfer-HEAD (the working tree may hold other work in progress that must not decide whether
# this call builds), with the carried .deps and .device and the llama.cpp build (.llama) linked in.
# Only files whose content changed are rewritten, so a warm machine's build stays incremental.
# Without git there, stays in the working tree. Sets `commit`.
root=$PWD
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "working tree")
if [ "$commit" != "working tree" ]; then
    rm -rf /tmp/twinfer-export && mkdir -p /tmp/twinfer-export /tmp/twinfer-HEAD "$root/.llama"
    git archive HEAD | tar x -C /tmp/twinfer-export
    python3 - <<'PY'
import filecmp, os, shutil
src, dst = "/tmp/twinfer-export", "/tmp/twinfer-HEAD"
for base, _, files in os.walk(src):
    for name in files:
        a = os.path.join(base, name)
        b = os.path.join(dst, os.path.relpath(a, src))
        if not os.path.exists(b) or not filecmp.cmp(a, b, shallow=False):
            os.makedirs(os.path.dirname(b), exist_ok=True)
            shutil.copy2(a, b)
            os.utime(b)
PY
    for d in .deps .device .llama; do ln -sfn "$root/$d" "/tmp/twinfer-HEAD/$d"; done
    cd /tmp/twinfer-HEAD || return 1
fi
echo "building commit $commit"
