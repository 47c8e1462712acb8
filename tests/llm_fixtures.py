"""Tiny decoders (Llama and GPT-2 shapes) built from configs, and a word-level tokenizer with a
chat template, for the causal-LM tests: no download, a second to build."""
import torch

WORDS = ["the", "sky", "is", "blue", "green", "red", "grass", "fire", "what", "colour", "?", "a", "b",
         "answer", ":", "yes", "no", "hot", "cold", "ice", "sun"]
SPECIAL = ["<pad>", "<unk>", "<eos>", "<user>", "<assistant>", "<end>"]
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <end> {% endfor %}"
                 "{% if add_generation_prompt %}<assistant> {% endif %}")


def tokenizer(chat: bool = False):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def decoder(kind: str = "llama", seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    vocab = len(SPECIAL) + len(WORDS)
    if kind == "llama":
        cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                       pad_token_id=0, eos_token_id=2, tie_word_embeddings=True,
                                       initializer_range=0.3)  # logits wide enough for adapters alone to move
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                      pad_token_id=0, eos_token_id=2, bos_token_id=2, initializer_range=0.3)
        model = transformers.GPT2LMHeadModel(cfg)
    return model.eval()
