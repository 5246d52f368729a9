# Revision 18's two device calls as one script (repository root; carry .whl). The calls themselves ran the same
# steps from a scratch folder: call 1 = steps 1-2, call 2 = steps 3-5, with the two modes of check_vs_tree.py as two
# scripts (cl_check.py, sv_check.py; merged afterwards, same inputs). This merged form was not itself run.
P=results/bench_attention_h100_fused/runs/rev18_prototypes
T=${TMPDIR:-/tmp}/rev18 && mkdir -p $T
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src; export TRITON_CACHE_DIR=$PWD/.triton_cache; export LONGSEQ_TRITON_TUNE=1
nvidia-smi --query-gpu=name,clocks.max.sm,driver_version --format=csv,noheader
python3 $P/mk_cl.py $T/tl_cl.py
sed "s/CL_SB = os.environ.get('CL_SB', '1')/CL_SB = os.environ.get('CL_SB', '0')/" $T/tl_cl.py > $T/tl_cl_dq.py
sed "s/CL_DQ = os.environ.get('CL_DQ', '1')/CL_DQ = os.environ.get('CL_DQ', '0')/" $T/tl_cl.py > $T/tl_cl_sb.py
python3 $P/mk_sv.py $T/tl_sv.py
echo "## 1. chunk-loop backward against the tree, GPU"
timeout 200 python3 $P/check_vs_tree.py $T/tl_cl.py 70001 attention
echo "## 2. A/B at 1M: tree, both chunk-loop kernels, dq only, state backward only"
timeout 420 python3 $P/ab.py tree,$T/tl_cl.py,$T/tl_cl_dq.py,$T/tl_cl_sb.py
echo "## 3. Σv in the state forward against the tree (eps 0.5)"
timeout 120 python3 $P/check_vs_tree.py $T/tl_sv.py 70001 state
echo "## 4. determinism"
timeout 150 python3 $P/det.py $T/tl_sv.py
echo "## 5. A/B at 1M"
timeout 300 python3 $P/ab.py tree,$T/tl_sv.py
