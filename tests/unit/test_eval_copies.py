"""The copies evals and reference sampling work on: a merged copy of a LoRA policy (training/evaluation.merged_copy) and
a sampling copy in another dtype (stages/reference_sft.sampling_copy). Neither may touch the training weights."""

import pytest
import torch


def lora_tiny():
    """The project's tiny model (models.build_tiny_model) with LoRA adapters that are not zero at the start."""
    from peft import LoraConfig, get_peft_model

    from personatune.models import build_tiny_model

    torch.manual_seed(0)  # the adapters' initialisation
    base, _ = build_tiny_model()
    return get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))


@pytest.mark.stage
def test_merged_copy_computes_the_adapted_model_and_leaves_the_adapters_in_place():
    from personatune.training.evaluation import merged_copy

    peft = lora_tiny()
    before = {k: v.clone() for k, v in peft.state_dict().items()}
    ids = torch.tensor([[3, 9, 14, 2, 7, 30]])
    with torch.inference_mode():
        want = peft(input_ids=ids).logits
        with peft.disable_adapter():
            base_logits = peft(input_ids=ids).logits
        merged = merged_copy(peft)
        got = merged(input_ids=ids).logits
    assert not hasattr(merged, "peft_config")  # a plain model: no adapter layers left
    assert float((got - want).abs().max()) < 1e-5
    assert float((want - base_logits).abs().max()) > 1e-3  # the adapters do change the output
    after = peft.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.stage
def test_merged_copy_leaves_large_and_plain_models_alone(monkeypatch):
    from personatune.training import evaluation

    peft = lora_tiny()
    monkeypatch.setattr(evaluation, "MERGED_COPY_MAX_BYTES", 1)  # every model counts as large
    assert evaluation.merged_copy(peft) is peft
    monkeypatch.undo()
    plain = peft.get_base_model()
    assert evaluation.merged_copy(plain) is plain


@pytest.mark.stage
def test_sampling_copy_is_a_copy_in_the_asked_dtype():
    from personatune.stages.reference_sft import sampling_copy

    model = lora_tiny().get_base_model()
    assert sampling_copy(model, "float32") is model
    half = sampling_copy(model, "bfloat16")
    assert half is not model and half.dtype == torch.bfloat16
    assert model.dtype == torch.float32  # the training weights stay as they are
    w = model.model.embed_tokens.weight
    assert torch.equal(half.model.embed_tokens.weight, w.to(torch.bfloat16))
