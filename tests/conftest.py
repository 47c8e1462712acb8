import pytest
import torch

import winnow

# Every device test runs on both: the CUDA cases are skipped (and say so) where no GPU is
# visible, and fail where a GPU is visible but winnow was built without its CUDA kernels, so
# that a GPU run can never pass by silently leaving the CUDA paths out.
DEVICES = ["cpu", "cuda"]


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device visible")
        if not winnow.build_info()["cuda_kernels"]:
            pytest.fail("a CUDA device is visible but winnow was built without its CUDA kernels "
                        "(rebuild with WINNOW_CUDA=1 and a CUDA build of torch)")
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_text_task(tmp_path_factory):
    """A 2-layer BERT with a word-level vocabulary, saved as a local HF folder, and a CSV."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("text")
    words = ["good", "great", "fine", "bad", "awful", "poor", "movie", "food", "the", "was", "is", "ok"]
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = transformers.BertTokenizerFast(vocab=str(root / "vocab.txt"))
    assert tok.unk_token_id not in tok("the food was good")["input_ids"]  # the vocabulary is really in use
    cfg = transformers.BertConfig(vocab_size=len(words) + 5, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)
    model_dir = root / "model"
    transformers.BertForSequenceClassification(cfg).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    g = torch.Generator().manual_seed(0)
    lines = ["review,stars"]
    for i in range(120):
        pos = i % 2 == 0
        w = words[int(torch.randint(0, 3, (1,), generator=g)) + (0 if pos else 3)]
        lines.append(f"the {words[6 + i % 3 // 2]} was {w} number {i},{'high' if pos else 'low'}")
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    return model_dir, root / "data.csv"
