"""CLIP score from a local CLIPModel directory: the tiny seeded model of tfmq_exp.eval.tiny_fidelity (offline)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from tfmq_exp.errors import MissingWeightsError, UserError
from tfmq_exp.eval.clip_score import clip_score, load_clip, projected_embedding
from tfmq_exp.eval.tiny_fidelity import save_tiny_clip

PROMPTS = ["photo of 9 dogs", "cat on the hill", "a dog and a cat", "the end."]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (len(PROMPTS), 3, 16, 16), generator=generator, dtype=torch.uint8)


def test_score_is_in_range_deterministic_and_depends_on_the_prompt(clip_dir: Path, images: torch.Tensor) -> None:
    score = clip_score(images, PROMPTS, str(clip_dir))
    assert 0.0 < score <= 100.0
    assert clip_score(images, PROMPTS, str(clip_dir)) == score
    assert clip_score(images, PROMPTS, str(clip_dir), batch_size=3) == pytest.approx(score, rel=1e-5)
    other = clip_score(images, ["a photo of the cat"] * len(PROMPTS), str(clip_dir))
    assert 0.0 <= other <= 100.0 and other != pytest.approx(score, abs=1e-3)
    gray = clip_score(images[:, :1], PROMPTS, str(clip_dir))  # one channel is repeated to three
    assert gray == clip_score(images[:, :1].expand(-1, 3, -1, -1).contiguous(), PROMPTS, str(clip_dir))


def test_score_is_the_mean_of_per_pair_clamped_cosines(clip_dir: Path, images: torch.Tensor) -> None:
    model, processor = load_clip(clip_dir)
    with torch.no_grad():
        pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
        assert pixels.shape == (len(PROMPTS), 3, 32, 32)  # the tiny processor's 32 px crop
        text = processor(text=PROMPTS, return_tensors="pt", padding=True)
        image_embedding = projected_embedding(model.get_image_features(pixel_values=pixels))
        text_embedding = projected_embedding(model.get_text_features(**text))
    image_embedding = image_embedding / image_embedding.norm(dim=-1, keepdim=True)
    text_embedding = text_embedding / text_embedding.norm(dim=-1, keepdim=True)
    cosine = (image_embedding * text_embedding).sum(-1)
    assert (cosine < 0).any() and (cosine > 0).any()  # the clamp is per pair, not on the mean
    expected = (100 * cosine).clamp(min=0).mean().item()
    assert clip_score(images, PROMPTS, str(clip_dir)) == pytest.approx(expected, rel=1e-5)


def test_projected_embedding_accepts_tensors_and_model_outputs() -> None:
    embedding = torch.randn(2, 4)
    assert projected_embedding(embedding) is embedding
    output = BaseModelOutputWithPooling(last_hidden_state=torch.zeros(2, 3, 4), pooler_output=embedding)
    assert projected_embedding(output) is embedding
    with pytest.raises(TypeError):
        projected_embedding(BaseModelOutputWithPooling(last_hidden_state=torch.zeros(2, 3, 4)))


def test_tiny_clip_is_seeded(clip_dir: Path, tmp_path: Path) -> None:
    again = save_tiny_clip(tmp_path / "again")
    other = save_tiny_clip(tmp_path / "other", seed=1)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"):
        assert (again / name).read_bytes() == (clip_dir / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (clip_dir / "model.safetensors").read_bytes()


@pytest.mark.parametrize("remove", [None, ["config.json"], ["model.safetensors"], ["tokenizer.json", "vocab.json"]])
def test_missing_model_files_are_one_line_errors(
    remove: list[str] | None, clip_dir: Path, images: torch.Tensor, tmp_path: Path
) -> None:
    target = tmp_path / "clip"
    if remove is not None:
        shutil.copytree(clip_dir, target)
        for name in remove:
            (target / name).unlink()
    with pytest.raises(MissingWeightsError) as error:
        clip_score(images, PROMPTS, str(target))
    message = str(error.value)
    assert isinstance(error.value, UserError) and "\n" not in message
    assert f"eval.clip_model={target}" in message and "eval.clip_model=DIR" in message


def test_bad_inputs_are_rejected(clip_dir: Path, images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="one prompt per image"):
        clip_score(images, PROMPTS[:2], str(clip_dir))
    with pytest.raises(ValueError, match="uint8"):
        clip_score(images.float(), PROMPTS, str(clip_dir))
