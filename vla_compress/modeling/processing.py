"""`OpenVLAProcessor`: images -> `pixel_values`, instructions (+ actions) -> token ids.

Batches use a "mid-padded" layout: `[BOS, PAD.., prompt.., ▁, (actions)]`. After the image
patches are inserted right after BOS (as OpenVLA does) every row ends at the same column, so
batched greedy decoding appends to the right with a KV cache, and a batch gives the same
actions as its samples one at a time (positions come from the attention mask, not the column).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .action_tokenizer import ACTION_DIM, ActionTokenizer, normalize_actions
from .config import OpenVLAConfig
from .text_tokenizer import SPACE_TOKEN

PROMPT_TEMPLATE = "In: What action should the robot take to {instruction}?\nOut:"
PREPROCESSOR_FILE = "preprocessor_config.json"

# from_pretrained options transformers records in a loaded tokenizer's config; dropped when saving
TOKENIZER_LOAD_OPTIONS = ("is_local", "local_files_only")


def prompt_for(instruction: str) -> str:
    """OpenVLA's prompt for one instruction."""
    return PROMPT_TEMPLATE.format(instruction=instruction.lower())


def _as_image_batch(images: np.ndarray | torch.Tensor | Sequence) -> torch.Tensor:
    """Accept uint8 `[B, H, W, 3]` (numpy / torch), or a list of `[H, W, 3]` arrays or PIL images."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images is empty; expected a batch of RGB images [B, H, W, 3]")
        images = np.stack([np.asarray(image) for image in images])
    tensor = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if tensor.ndim == 3:
        raise ValueError(f"images has shape {tuple(tensor.shape)}; expected a batch [B, H, W, 3]: add a batch axis")
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"images has shape {tuple(tensor.shape)}; expected [B, H, W, 3] RGB (channels last)")
    if tensor.dtype != torch.uint8:
        raise ValueError(f"images has dtype {tensor.dtype}; expected uint8 in [0, 255]")
    if tensor.shape[0] == 0:
        raise ValueError(f"images is an empty batch (shape {tuple(tensor.shape)}); expected at least one RGB image "
                         "[B, H, W, 3] with B >= 1, and one instruction per image")
    return tensor


def resize_images(batch: torch.Tensor, size: int, max_value: float) -> torch.Tensor:
    """Float `[B, C, H, W]` in [0, max_value] -> `[B, C, size, size]` (bicubic, antialiased, clamped); the
    processor's resize, unchanged when already that size."""
    if tuple(batch.shape[-2:]) == (size, size):
        return batch
    resized = F.interpolate(batch, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return resized.clamp_(0.0, max_value)


def _shift_pad(height: int, pad_fraction: float) -> int:
    return max(1, int(round(pad_fraction * height)))


def shift_offsets(rng: np.random.Generator, batch: int, height: int, pad_fraction: float = 0.06
                  ) -> tuple[int, np.ndarray]:
    """(pad, offsets `[B, 2]` (row, column) into the padded image) that `shift_images` draws from `rng`.

    Image content moves by `pad - offsets` pixels (down, right): training losses on image positions
    shift their targets with it."""
    pad = _shift_pad(height, pad_fraction)
    return pad, rng.integers(0, 2 * pad + 1, size=(batch, 2))


def shift_images(images: torch.Tensor, rng: np.random.Generator | None, pad_fraction: float = 0.06,
                 offsets: np.ndarray | None = None) -> torch.Tensor:
    """Shift each image of a uint8 `[B, H, W, 3]` tensor by up to `pad_fraction` of its size, on its device.

    OpenVLA's crop augmentation as a shift: edge (replicate) padding, then a random crop back to the input
    size; the offsets come from `rng`, so host batches (`OpenVLAProcessor.batch`) and device-resident ones
    (`ResidentDemos`) draw the same shifts for the same generator. Given `offsets` (from `shift_offsets`),
    nothing is drawn and `rng` may be None.
    """
    batch, height, width, _ = images.shape
    if offsets is None:
        if rng is None:
            raise ValueError("shift_images needs rng or offsets; got neither")
        pad, offsets = shift_offsets(rng, batch, height, pad_fraction)
    else:
        pad = _shift_pad(height, pad_fraction)
    offsets = torch.as_tensor(offsets, device=images.device)
    # replicate-pad needs a float NCHW tensor; values stay integers, so the uint8 round trip is exact
    padded = F.pad(images.permute(0, 3, 1, 2).float(), (pad, pad, pad, pad), mode="replicate")
    ys = offsets[:, :1] + torch.arange(height, device=images.device)  # [B, H]
    xs = offsets[:, 1:] + torch.arange(width, device=images.device)  # [B, W]
    b = torch.arange(batch, device=images.device)[:, None, None]
    shifted = padded.permute(0, 2, 3, 1)[b, ys[:, :, None], xs[:, None, :]]
    return shifted.to(torch.uint8)


def check_samples(samples: Sequence[Mapping]) -> bool:
    """Validate robot samples before they are batched; returns whether they carry actions.

    Raises a ValueError naming the sample index, the field and what was expected: images uint8
    `[H, W, 3]` of one shape (float images would be cast to black by the uint8 augmentation), an
    instruction string, and either no sample or every sample with a finite action of 7 values."""
    if len(samples) == 0:
        raise ValueError("samples is empty; expected dicts with image, instruction and action")
    with_action = "action" in samples[0]
    first_shape = None
    for i, sample in enumerate(samples):
        for key in ("image", "instruction"):
            if key not in sample:
                raise ValueError(f"samples[{i}] has no {key!r}; expected keys image, instruction, action")
        image = np.asarray(sample["image"])
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"samples[{i}]['image'] is {image.dtype} {tuple(image.shape)}; expected uint8 "
                             "[H, W, 3] in [0, 255]")
        first_shape = first_shape or image.shape
        if image.shape != first_shape:
            raise ValueError(f"samples[{i}]['image'] has shape {image.shape}, samples[0]['image'] {first_shape}; "
                             "one batch needs one image size")
        if not isinstance(sample["instruction"], str):
            raise ValueError(f"samples[{i}]['instruction'] is a {type(sample['instruction']).__name__}; expected str")
        if ("action" in sample) != with_action:
            raise ValueError(f"samples[{i}] {'lacks' if with_action else 'has'} an 'action' unlike samples[0]; "
                             "give every sample an action or none")
        if with_action:
            action = np.asarray(sample["action"], dtype=np.float64)
            if action.shape != (ACTION_DIM,):
                raise ValueError(f"samples[{i}]['action'] has shape {action.shape}; expected ({ACTION_DIM},): "
                                 "xyz delta, rotation delta, gripper")
            if not np.isfinite(action).all():
                raise ValueError(f"samples[{i}]['action'] is {action.tolist()}; expected finite values")
    return with_action


class OpenVLAProcessor:
    """Image transforms for one or two vision backbones, the prompt, and action tokens."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, image_sizes: Sequence[int],
                 means: Sequence[Sequence[float]], stds: Sequence[Sequence[float]],
                 image_resize_strategy: str = "resize-naive", n_action_bins: int = 256,
                 action_vocab_end: int | None = None) -> None:
        if len(set(image_sizes)) != 1:
            raise ValueError(f"fused backbones must share one image size, got {list(image_sizes)}")
        self.tokenizer = tokenizer
        self.image_sizes, self.means, self.stds = list(image_sizes), [list(m) for m in means], [list(s) for s in stds]
        self.image_resize_strategy = image_resize_strategy
        self.space_token_id = tokenizer.convert_tokens_to_ids(SPACE_TOKEN)
        vocab_end = action_vocab_end if action_vocab_end is not None else tokenizer.vocab_size
        self.action_tokenizer = ActionTokenizer(vocab_end=vocab_end, n_bins=n_action_bins)

    @classmethod
    def from_config(cls, config: OpenVLAConfig, tokenizer: PreTrainedTokenizerBase) -> OpenVLAProcessor:
        """Derive the image normalisation of each backbone from timm's pretrained config."""
        cfgs = [timm.get_pretrained_cfg(model_id) for model_id in config.timm_model_ids]
        return cls(tokenizer, config.image_sizes, [c.mean for c in cfgs], [c.std for c in cfgs],
                   config.image_resize_strategy, config.n_action_bins, config.action_vocab_end)

    # ---- images ---------------------------------------------------------------------------------------
    def frames(self, images: np.ndarray | torch.Tensor | Sequence) -> torch.Tensor:
        """uint8 RGB `[B, H, W, 3]` -> float `[B, 3, S, S]` in [0, 1] at the model's input size, before
        normalisation. A torch tensor is transformed on its own device."""
        batch = _as_image_batch(images).permute(0, 3, 1, 2).float().div_(255.0)
        return resize_images(batch, self.image_sizes[0], 1.0)

    def pixel_values(self, images: np.ndarray | torch.Tensor | Sequence) -> torch.Tensor:
        """uint8 RGB `[B, H, W, 3]` -> float `[B, 3 * n_backbones, S, S]`, normalised per backbone.

        A torch tensor is transformed on its own device (a GPU-resident batch stays on the GPU)."""
        batch = self.frames(images)
        normalised = [
            (batch - torch.tensor(m, device=batch.device).view(1, 3, 1, 1))
            / torch.tensor(s, device=batch.device).view(1, 3, 1, 1)
            for m, s in zip(self.means, self.stds)
        ]
        return torch.cat(normalised, dim=1)

    # ---- text -----------------------------------------------------------------------------------------
    def prompt_ids(self, instruction: str) -> list[int]:
        """`[BOS, prompt.., ▁]` for one instruction."""
        ids = self.tokenizer(prompt_for(instruction), add_special_tokens=True).input_ids
        return ids if ids[-1] == self.space_token_id else ids + [self.space_token_id]

    def tokenize(self, instructions: Sequence[str], actions: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Mid-padded `input_ids` and `attention_mask`; normalised `actions [B, D]` are appended as tokens."""
        if isinstance(instructions, str) or not all(isinstance(i, str) for i in instructions):
            raise ValueError("instructions must be a list of strings, one per image")
        if len(instructions) == 0:
            raise ValueError("instructions is empty; expected a list of strings, one per image")
        rows = [self.prompt_ids(instruction) for instruction in instructions]
        if actions is not None:
            action_ids = self.action_tokenizer.encode(np.asarray(actions)).tolist()
            if len(action_ids) != len(rows):
                raise ValueError(f"actions has {len(action_ids)} rows for {len(rows)} instructions")
            rows = [row + ids for row, ids in zip(rows, action_ids)]
        length = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), length), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):  # [BOS, PAD.., rest]: BOS stays in column 0
            input_ids[i, 0], attention_mask[i, 0] = row[0], 1
            input_ids[i, length - len(row) + 1:] = torch.tensor(row[1:])
            attention_mask[i, length - len(row) + 1:] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def sample_arrays(self, samples: Sequence[Mapping], norm_stats: Mapping | None = None,
                      unnorm_key: str | None = None) -> tuple[torch.Tensor, list[str], np.ndarray | None]:
        """Checked samples -> (uint8 images `[B, H, W, 3]`, instructions, normalised actions or None).

        Actions are in the dataset's units and normalised with `norm_stats` (OpenVLA's q01 / q99); without
        `norm_stats` they are taken as already normalised to [-1, 1]."""
        with_action = check_samples(samples)
        images = torch.from_numpy(np.stack([np.asarray(s["image"]) for s in samples]))
        actions = None
        if with_action:
            actions = np.stack([np.asarray(s["action"], np.float32) for s in samples])
            if norm_stats:
                actions = normalize_actions(actions, norm_stats, unnorm_key)
        return images, [s["instruction"] for s in samples], actions

    def batch(self, samples: Sequence[Mapping], norm_stats: Mapping | None = None, unnorm_key: str | None = None,
              augment: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """Robot samples `{"image", "instruction", "action"}` -> a model batch: the one path SFT, pruning
        calibration, GPTQ and the CLI share. `augment` draws random shifts (`shift_images`); None: none."""
        images, instructions, actions = self.sample_arrays(samples, norm_stats, unnorm_key)
        if augment is not None:
            images = shift_images(images, augment)
        return self(images, instructions, actions)

    def __call__(self, images, instructions: Sequence[str], actions: np.ndarray | None = None) -> dict:
        """Everything the model's forward needs for a batch."""
        pixel_values = self.pixel_values(images)
        if isinstance(instructions, str):
            raise ValueError("instructions must be a list of strings, one per image, not one string "
                             "(a batch of one image takes a list of one)")
        if len(instructions) != pixel_values.shape[0]:
            raise ValueError(
                f"instructions has {len(instructions)} entries but images has {pixel_values.shape[0]}; "
                "pass one instruction per image"
            )
        return {"pixel_values": pixel_values, **self.tokenize(instructions, actions)}

    # ---- persistence ----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for option in TOKENIZER_LOAD_OPTIONS:  # how this copy was loaded, not what the tokenizer is
            self.tokenizer.init_kwargs.pop(option, None)
        self.tokenizer.save_pretrained(directory)
        config = {
            "processor_class": "OpenVLAProcessor",
            "image_processor_type": "PrismaticImageProcessor",
            "image_resize_strategy": self.image_resize_strategy,
            "input_sizes": [[3, s, s] for s in self.image_sizes],
            "means": self.means,
            "stds": self.stds,
            "n_action_bins": self.action_tokenizer.n_bins,
            "action_vocab_end": self.action_tokenizer.vocab_end,
        }
        (directory / PREPROCESSOR_FILE).write_text(json.dumps(config, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path, config: OpenVLAConfig) -> OpenVLAProcessor:
        """Load the tokenizer from `directory`; image settings from its preprocessor config or `config`."""
        directory = Path(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = "<PAD>"
        path = directory / PREPROCESSOR_FILE
        if not path.exists():
            return cls.from_config(config, tokenizer)
        saved = json.loads(path.read_text())
        sizes = [shape[-1] for shape in saved["input_sizes"]]
        return cls(tokenizer, sizes, saved["means"], saved["stds"], saved.get("image_resize_strategy", "resize-naive"),
                   config.n_action_bins, config.action_vocab_end)
