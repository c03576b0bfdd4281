"""The procedural shapes world: determinism, coverage, truthful captions."""

from __future__ import annotations

import re

import numpy as np
import pytest

from visprompt.backbone import clip_tokenizer
from visprompt.data import synthetic as syn


def test_same_seed_same_pixels_and_captions():
    a_img, a_cap, a_scn = syn.generate(40, seed=7, world=syn.PRETRAIN_WORLD)
    b_img, b_cap, b_scn = syn.generate(40, seed=7, world=syn.PRETRAIN_WORLD)
    assert a_img.dtype == np.uint8 and a_img.shape == (40, 32, 32, 3)
    assert np.array_equal(a_img, b_img)
    assert a_cap == b_cap
    assert a_scn == b_scn


def test_different_seed_differs():
    a_img, a_cap, _ = syn.generate(20, seed=1)
    b_img, b_cap, _ = syn.generate(20, seed=2)
    assert not np.array_equal(a_img, b_img)
    assert a_cap != b_cap


def test_scene_depends_only_on_seed_and_index():
    # Batches of any size and offset give the same scene i (streaming pretraining relies on it).
    whole, caps, _ = syn.generate(12, seed=3)
    part, part_caps, _ = syn.generate(4, seed=3, start=8)
    assert np.array_equal(whole[8:], part)
    assert caps[8:] == part_caps


def test_render_is_a_function_of_the_scene():
    scene = syn.sample_scene(syn.scene_rng(0, 0), syn.DOWNSTREAM_WORLD)
    a = np.asarray(syn.render(scene, size=48))
    b = np.asarray(syn.render(scene, size=48))
    assert a.shape == (48, 48, 3)
    assert np.array_equal(a, b)


def test_attribute_coverage():
    assert len(syn.SHAPES) >= 10
    assert len(syn.COLOURS) >= 8
    assert len(syn.BACKGROUNDS) >= 5
    _, _, scenes = syn.generate(600, seed=0, world=syn.World(clutter_prob=0.5, occlusion_prob=0.5))
    assert {s.shape for s in scenes} == set(syn.SHAPES)
    assert {s.colour for s in scenes} == set(syn.COLOURS)
    assert {s.background for s in scenes} == set(syn.BACKGROUNDS)
    assert {s.size for s in scenes} == set(syn.SIZES)
    assert any(s.clutter for s in scenes) and any(not s.clutter for s in scenes)
    assert any(s.occluded for s in scenes) and any(not s.occluded for s in scenes)
    assert all(s.colour != s.bg_colour for s in scenes)
    assert len({s.position for s in scenes}) == 9


def _centred(shape: str, colour: str, bg_colour: str) -> syn.Scene:
    """A large, centred, upright, unoccluded shape on a plain background."""
    return syn.Scene(
        shape=shape,
        colour=colour,
        size="large",
        radius=0.38,
        x=0.5,
        y=0.5,
        angle=0.0,
        background="plain",
        bg_colour=bg_colour,
        clutter=0,
        occluded=False,
        detail_seed=0,
    )


@pytest.mark.parametrize("shape", syn.SHAPES)
def test_every_shape_is_painted_in_its_colour(shape):
    # The pixel at the centre of its mass has the shape's colour and the corners
    # the background's.
    scene = _centred(shape, "red", "blue")
    img = np.asarray(syn.render(scene, size=32)).astype(int)
    red = np.all(np.abs(img - np.array(syn.COLOURS["red"])) < 10, axis=-1)
    assert red.sum() > 40  # the shape covers a real part of the picture
    assert np.all(np.abs(img[0, 0] - np.array(syn.COLOURS["blue"])) < 10)


def test_shapes_differ_from_each_other():
    masks = {
        s: np.asarray(syn.render(_centred(s, "white", "black"))).mean(axis=-1) > 128
        for s in syn.SHAPES
    }
    for i, a in enumerate(syn.SHAPES):
        for b in syn.SHAPES[i + 1 :]:
            assert np.mean(masks[a] != masks[b]) > 0.02, (a, b)


def test_clutter_and_occlusion_change_the_picture():
    scene = syn.sample_scene(syn.scene_rng(5, 0), syn.World(backgrounds=(("plain", 1.0),)))
    plain = np.asarray(syn.render(scene))
    cluttered = syn.Scene(**{**scene.__dict__, "clutter": 6})
    occluded = syn.Scene(**{**scene.__dict__, "occluded": True})
    assert not np.array_equal(plain, np.asarray(syn.render(cluttered)))
    assert not np.array_equal(plain, np.asarray(syn.render(occluded)))


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text)


def test_captions_are_true():
    world = syn.World(clutter_prob=0.5, occlusion_prob=0.5)
    _, captions, scenes = syn.generate(800, seed=11, world=world)
    position_words = {"top", "bottom", "left", "right", "center", "middle"}
    for text, scene in zip(captions, scenes, strict=True):
        words = _words(text)
        assert scene.shape in words, text
        # no other shape, colour, pattern or size than the scene's
        assert not (set(words) & set(syn.SHAPES)) - {scene.shape}, text
        assert not (set(words) & set(syn.COLOURS)) - {scene.colour, scene.bg_colour}, text
        assert not (set(words) & set(syn.BACKGROUNDS)) - {scene.background}, text
        assert not (set(words) & set(syn.SIZES)) - {scene.size}, text
        if set(words) & position_words:
            phrase = scene.position.replace("center", "(center|middle)")
            assert re.search(rf"\b{phrase}\b", text), (text, scene.position)
        if "clutter" in words or "scribbles" in words:
            assert scene.clutter > 0, text
        if "bar" in words:
            assert scene.occluded, text
        if "tilted" in words or "upright" in words:
            assert scene.shape not in syn.ROTATION_FREE, text
            assert ("upright" in words) == (abs(scene.angle) < 8), text
        # colour words sit next to what they describe
        m = re.search(rf"(\w+) {scene.shape}\b", text)
        if m and m.group(1) in syn.COLOURS:
            assert m.group(1) == scene.colour, text
        m = re.search(r"(\w+) (\w+) background", text)
        if m:
            for w in m.groups():
                if w in syn.COLOURS:
                    assert w == scene.bg_colour, text


def test_captions_vary_and_reach_late_positions():
    _, captions, _ = syn.generate(500, seed=2)
    tok = clip_tokenizer(77)
    lengths = np.array([len(tok.encode(c)) + 2 for c in captions])
    assert len(set(captions)) > 400
    # prompt learning puts the class name after 16 context tokens: positions up to
    # ~24 must be trained, so a good share of captions reaches them.
    assert np.mean(lengths >= 24) > 0.08
    assert lengths.min() <= 8
    # one template family puts the shape name last
    last = [c for c in captions if re.search(r"(is a|: a) \w+\.$", c)]
    assert len(last) > 100


def test_caption_vocabulary_covers_captions():
    vocab = set(syn.caption_vocabulary())
    _, captions, _ = syn.generate(
        400, seed=4, world=syn.World(clutter_prob=0.5, occlusion_prob=0.5)
    )
    for text in captions:
        for w in text.replace(".", " . ").replace(",", " , ").replace(";", " ; ").split():
            assert w in vocab or w.rstrip(":") in vocab, (w, text)


def test_class_balanced_sets():
    images, labels, scenes = syn.generate_class_balanced(3, seed=0, shapes=("star", "heart"))
    assert images.shape == (6, 32, 32, 3)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert [s.shape for s in scenes] == ["star"] * 3 + ["heart"] * 3
    again, _, _ = syn.generate_class_balanced(3, seed=0, shapes=("star", "heart"))
    assert np.array_equal(images, again)


def test_colour_habits_hold_in_pretraining_and_break_downstream():
    assert set(syn.TYPICAL_COLOURS) == set(syn.SHAPES)
    assert set(syn.TYPICAL_COLOURS.values()) <= set(syn.COLOURS)
    _, _, pre = syn.generate(1200, seed=9, world=syn.PRETRAIN_WORLD)
    _, _, down = syn.generate(1200, seed=9, world=syn.DOWNSTREAM_WORLD)

    def habitual(scenes):
        return np.mean([s.colour == syn.TYPICAL_COLOURS[s.shape] for s in scenes])

    p = syn.PRETRAIN_WORLD.typical_colour_prob
    expected = p + (1 - p) / len(syn.COLOURS)
    assert abs(habitual(pre) - expected) < 0.05
    assert abs(habitual(down) - 1 / len(syn.COLOURS)) < 0.04


def test_coarse_camera_pixelates_the_same_scenes():
    fine = syn.World()
    coarse = syn.World(pixel_block=2)
    sharp, _, scenes = syn.generate(6, seed=21, world=fine)
    blocky, _, same = syn.generate(6, seed=21, world=coarse)
    assert scenes == same
    # every 2 x 2 block holds one colour, and the camera pixels are the sharp
    # picture reduced to 16 px
    assert np.array_equal(blocky, blocky[:, ::2, ::2].repeat(2, axis=1).repeat(2, axis=2))
    reduced = np.asarray(
        syn.render(scenes[0], size=32).resize((16, 16), syn.Image.Resampling.BILINEAR)
    )
    assert np.array_equal(blocky[0, ::2, ::2], reduced)
    assert np.abs(blocky[0, ::2, ::2].astype(int) - sharp[0, ::2, ::2]).mean() > 1
    assert not np.array_equal(sharp, blocky)
    assert syn.DOWNSTREAM_WORLD.pixel_block == 2 and syn.PRETRAIN_WORLD.pixel_block == 1
    with pytest.raises(ValueError, match="divide the image size"):
        syn.picture(scenes[0], syn.World(pixel_block=3), size=32)
