"""The CLIP stage's grounding loss (issue #15): the formula on a toy, which pairs it grounds, bad inputs,
and a tiny CLIP stage whose map it moves onto the named objects."""
import math

import pytest
import torch
import torch.nn.functional as F

from ppllava.train.config import TrainConfig
from ppllava.train.losses import grounding_loss


def test_grounding_loss_is_minus_the_log_of_the_maps_share_on_the_object():
    torch.manual_seed(0)
    e, c, scale = torch.randn(3, 6, 4), torch.randn(3, 4), torch.tensor(math.log(10.0))
    masks = torch.zeros(3, 6, dtype=torch.bool)
    masks[0, [1, 2]] = True
    masks[1, 5] = True
    masks[2, 0] = True
    plain = []
    for i in range(3):  # the plain loop: relevance map of text i over image i's patches, its mass on the mask
        r = [float(F.cosine_similarity(e[i, p], c[i], dim=0)) for p in range(6)]
        weights = [math.exp(10.0 * v) for v in r]
        plain.append(-math.log(sum(w for w, m in zip(weights, masks[i]) if m) / sum(weights)))
    assert grounding_loss(e, c, scale, masks).item() == pytest.approx(sum(plain) / 3, rel=1e-5)
    keep = torch.tensor([True, False, True])
    assert grounding_loss(e, c, scale, masks, keep).item() == pytest.approx((plain[0] + plain[2]) / 2, rel=1e-5)
    masks[1] = False  # an empty mask is left out, as if not kept
    assert grounding_loss(e, c, scale, masks).item() == pytest.approx((plain[0] + plain[2]) / 2, rel=1e-5)


def test_a_map_all_on_the_object_costs_nothing_and_one_off_it_costs_much():
    e = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])  # patch 0 shows the named thing
    c = torch.tensor([[1.0, 0.0]])
    on, off = torch.tensor([[True, False, False]]), torch.tensor([[False, True, False]])
    assert grounding_loss(e, c, torch.tensor(math.log(100.0)), on).item() < 1e-6
    assert grounding_loss(e, c, torch.tensor(math.log(100.0)), off).item() > 50


@pytest.mark.parametrize("shapes, match", [
    (((2, 5, 4), (3, 4), (2, 5)), "text_embeds"),
    (((2, 5, 4), (2, 3), (2, 5)), "text_embeds"),
    (((2, 5, 4), (2, 4), (2, 6)), "masks must be bool of shape"),
])
def test_grounding_loss_names_the_shape_at_fault(shapes, match):
    e, c, m = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        grounding_loss(e, c, torch.tensor(0.0), m.bool())


def test_grounding_loss_refuses_float_masks_and_nothing_to_ground():
    e, c = torch.randn(2, 5, 4), torch.randn(2, 4)
    with pytest.raises(ValueError, match="bool"):
        grounding_loss(e, c, torch.tensor(0.0), torch.ones(2, 5))
    with pytest.raises(ValueError, match="no pair to ground"):
        grounding_loss(e, c, torch.tensor(0.0), torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="no pair to ground"):
        grounding_loss(e, c, torch.tensor(0.0), torch.ones(2, 5, dtype=torch.bool), torch.tensor([False, False]))


def test_the_collator_grounds_a_prompt_only_where_it_fits_its_target_alone():
    from ppllava.data.clip_pairs import ClipPairCollator

    def item(name, objects):
        return {"pixel_values": torch.zeros(3, 4, 4), "mask": torch.zeros(2, 2, dtype=torch.bool),
                "object_mask": torch.ones(2, 2, dtype=torch.bool), "name": name, "objects": objects}

    items = [item("red star", ["red star", "blue star"]), item("red star", ["red star", "red circle"]),
             item("green square", ["green square"])]
    assert ClipPairCollator(77)(items)["grounded"].tolist() == [True, True, True]  # full names fit one object
    shape_only = ClipPairCollator(77, form="shape")(items)["grounded"]  # "a star" fits both stars of image 0
    colour_only = ClipPairCollator(77, form="colour")(items)["grounded"]  # "a red object" fits two of image 1
    assert shape_only.tolist() == [False, True, True] and colour_only.tolist() == [True, False, True]


def test_train_config_checks_the_grounding_weight():
    with pytest.raises(ValueError, match="clip_grounding must be >= 0"):
        TrainConfig(stage="clip", clip_grounding=-1.0)
    with pytest.raises(ValueError, match="needs clip_loss 'fine_grained'"):
        TrainConfig(stage="clip", clip_loss="global", clip_grounding=1.0)
    assert TrainConfig(stage="clip", clip_grounding=2.0).clip_grounding == 2.0


def test_grounding_moves_a_tiny_clip_stages_map_onto_the_named_objects(tmp_path):
    """The same tiny CLIP stage, seed and steps, with the grounding loss and without: on the pairs it trained
    on (64 pictures, which 40 steps begin to memorise either way) the map points at the named object more
    often with it, by the evaluation's own pointing rule (prompt_relevance, not the loss)."""
    from torch.utils.data import DataLoader

    from ppllava.data.clip_pairs import ClipPairCollator, ClipPairDataset
    from ppllava.data.world import WorldSpec, write_world
    from ppllava.evaluate import pointing
    from ppllava.model.loading import load_pretrained
    from ppllava.train.run import run

    write_world(tmp_path / "world", WorldSpec(layout="free"), train=64, val=16, test=0, long_per_length=0, progress=False)
    scores, metrics = {}, {}
    for weight in (0.0, 4.0):
        cfg = TrainConfig(stage="clip", preset="tiny", data=str(tmp_path / "world"), run_dir=str(tmp_path / f"g{weight}"),
                          batch_size=16, lr=2e-3, max_steps=40, max_epochs=100, limit_val_batches=1, clip_grounding=weight)
        metrics[weight] = run(cfg)
        model = load_pretrained(tmp_path / f"g{weight}" / "model").eval()
        pairs = ClipPairDataset(tmp_path / "world" / "train.json", model.config.image_size, model.config.patch_size)
        scores[weight] = pointing(model, DataLoader(pairs, batch_size=32, collate_fn=ClipPairCollator(77)), rule="object")
    assert "val/grounding" in metrics[0.0] and "train/grounding" not in metrics[0.0] and "train/grounding" in metrics[4.0]
    assert scores[4.0] > scores[0.0] + 0.15, scores
