"""An offline word-level tokenizer for the small presets, laid out like OpenVLA's Llama vocabulary.

openvla-7b uses Llama-2's 32000-token vocabulary: the last 256 ids are (re)used as action tokens,
`<PAD>` is id 32000, and the embedding matrix is padded to 32064. The small presets keep that
layout at `vocab_size=512`: special tokens, the `▁` space token that ends every prompt, a word
list, filler, then 256 action tokens; `<PAD>` = 512; embeddings padded to 576.
Built with the `tokenizers` library so it needs no download and saves as `tokenizer.json`.
"""

from __future__ import annotations

from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

SPACE_TOKEN = "▁"  # OpenVLA appends this token (Llama id 29871) after "Out:" before the actions.
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", SPACE_TOKEN]
WORDS = (
    "in what action should the robot take to ? : out . , "
    "put place move push pick lift grasp open close stack insert turn slide drop set up down left right "
    "on onto into in at of from with and a an near next top bottom front back "
    "cube cubes block plate bowl cup can bottle box drawer door mug spoon carrot eggplant towel basket "
    "red green blue yellow purple orange white black pink brown gray grey cyan "
    "small large big first second third object table sink"
).split()


def build_word_tokenizer(vocab_size: int = 512, n_action_bins: int = 256) -> PreTrainedTokenizerFast:
    """Build the small presets' tokenizer; ids `vocab_size - n_action_bins .. vocab_size - 1` are actions."""
    words = SPECIAL_TOKENS + list(dict.fromkeys(WORDS))
    n_filler = vocab_size - n_action_bins - len(words)
    if n_filler < 0:
        raise ValueError(f"vocab_size={vocab_size} is too small for {len(words)} words + {n_action_bins} actions")
    tokens = words + [f"<extra_{i}>" for i in range(n_filler)] + [f"<act_{i}>" for i in range(n_action_bins)]
    vocab = {token: i for i, token in enumerate(tokens)}
    vocab["<PAD>"] = vocab_size
    tokenizer = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<PAD>",
        padding_side="left",
    )
