"""Architecture detection from config.json + tensor names, one case per family."""

import pytest

from jang.arch import DENSE, HYBRID, LINEAR_ATTENTION, MOE, SSM, ArchError, detect, layer_index
from plan_fixtures import FAMILY_FILES, load

# fixture -> (model_type of the text tower, family, routed experts, shared, tied, mla, vlm)
EXPECTED = {
    "llama": ("llama", DENSE, 0, 0, False, False, False),
    "qwen2": ("qwen2", DENSE, 0, 0, True, False, False),
    "qwen3": ("qwen3", DENSE, 0, 0, False, False, False),
    "mistral": ("mistral", DENSE, 0, 0, False, False, False),
    "gemma": ("gemma", DENSE, 0, 0, True, False, False),
    "gemma2": ("gemma2", DENSE, 0, 0, True, False, False),
    "gemma3_text": ("gemma3_text", DENSE, 0, 0, True, False, False),
    "gemma3_vlm": ("gemma3_text", DENSE, 0, 0, True, False, True),
    "qwen2_5_vl": ("qwen2_5_vl", DENSE, 0, 0, False, False, True),
    "phi3": ("phi3", DENSE, 0, 0, False, False, False),
    "mixtral": ("mixtral", MOE, 4, 0, False, False, False),
    "qwen2_moe": ("qwen2_moe", MOE, 8, 1, False, False, False),
    "qwen3_moe": ("qwen3_moe", MOE, 8, 0, False, False, False),
    "deepseek_v2": ("deepseek_v2", MOE, 8, 1, False, True, False),
    "deepseek_v3": ("deepseek_v3", MOE, 256, 1, False, True, False),
    "gpt_oss": ("gpt_oss", MOE, 4, 0, False, False, False),
    "jamba": ("jamba", HYBRID, 4, 0, False, False, False),
    "nemotron_h": ("nemotron_h", HYBRID, 4, 1, False, False, False),
    "mamba": ("mamba", SSM, 0, 0, True, False, False),
    "qwen3_next": ("qwen3_next", LINEAR_ATTENTION, 8, 1, False, False, False),
    "unknown": ("mystery_lm", DENSE, 0, 0, True, False, False),
}


def test_every_fixture_has_an_expectation():
    assert set(FAMILY_FILES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_detect(name):
    config, tensors = load(name)
    arch = detect(config, [n for n, _ in tensors])
    model_type, family, experts, shared, tied, mla, vlm = EXPECTED[name]
    assert arch.model_type == model_type
    assert arch.family == family
    assert arch.num_experts == experts
    assert arch.num_shared_experts == shared
    assert arch.tie_word_embeddings is tied
    assert arch.mla is mla
    assert arch.vlm is vlm
    layers = {layer_index(n) for n, _ in tensors if "vision" not in n and "visual" not in n}
    assert arch.num_layers == max(i for i in layers if i is not None) + 1
    assert arch.known is (name != "unknown")
    if name == "unknown":
        assert any("mystery_lm" in w for w in arch.warnings)
    else:
        assert arch.warnings == ()


def test_vlm_container_type_is_kept():
    config, tensors = load("gemma3_vlm")
    arch = detect(config, [n for n, _ in tensors])
    assert arch.container_type == "gemma3"
    assert arch.hidden_size == config["text_config"]["hidden_size"]


def test_tied_from_names_when_config_is_silent():
    config, tensors = load("llama")
    config = {k: v for k, v in config.items() if k != "tie_word_embeddings"}
    names = [n for n, _ in tensors]
    assert detect(config, names).tie_word_embeddings is False
    assert detect(config, [n for n in names if n != "lm_head.weight"]).tie_word_embeddings


def test_untied_without_head_warns_and_ties():
    config, tensors = load("llama")
    arch = detect(config, [n for n, _ in tensors if n != "lm_head.weight"])
    assert arch.tie_word_embeddings
    assert any("no lm_head" in w for w in arch.warnings)


def test_layers_from_names_when_config_is_silent():
    config, tensors = load("llama")
    config = {k: v for k, v in config.items() if k != "num_hidden_layers"}
    arch = detect(config, [n for n, _ in tensors])
    assert arch.num_layers == 4
    assert any("num_hidden_layers missing" in w for w in arch.warnings)
    with pytest.raises(ArchError):
        detect(config, [])


def test_expert_count_from_names():
    config, tensors = load("mixtral")
    config = {k: v for k, v in config.items() if k != "num_local_experts"}
    arch = detect(config, [n for n, _ in tensors])
    assert arch.num_experts == 4 and arch.family == MOE
    assert any("no expert count" in w for w in arch.warnings)


def test_unknown_family_inferred_from_names():
    names = ["backbone.layers.0.mixer.in_proj.weight", "backbone.layers.0.mixer.A_log"]
    assert detect({"model_type": "new_ssm", "num_hidden_layers": 1}, names).family == SSM
    names += ["backbone.layers.1.mixer.q_proj.weight"]
    assert detect({"model_type": "new_hybrid", "num_hidden_layers": 2}, names).family == HYBRID
    moe = ["model.layers.0.mlp.experts.3.up_proj.weight"]
    arch = detect({"model_type": "new_moe", "num_hidden_layers": 1, "num_experts": 4}, moe)
    assert arch.family == MOE and not arch.known
