import numpy as np

from ocrl.viz import mark_position, slot_colours, slot_panels


def test_mark_position_draws_a_cross_at_the_centre_and_a_circle_of_the_size():
    image = np.zeros((32, 32, 3), np.uint8)
    colour = np.array([255, 0, 0], np.uint8)
    # x = 0.5, y = -0.5 in [-1, 1]: pixel (24, 8); size 0.25: a radius of 4 pixels
    marked = mark_position(image, np.array([0.5, -0.5, 0.25, 0.0]), colour)
    drawn = np.argwhere(marked.any(-1))  # (row, column)
    assert (marked[8, 24] == colour).all() or (marked[7, 23] == colour).all()
    distance = np.hypot(drawn[:, 0] + 0.5 - 8, drawn[:, 1] + 0.5 - 24)
    assert distance.max() < 4.7 and (distance > 3.4).sum() >= 16  # the ring
    assert not image.any()  # a copy


def test_slot_panels_rows_depth_and_marks_only_where_present():
    frames = np.full((3, 16, 16, 3), 200, np.uint8)
    masks = np.zeros((3, 3, 16, 16), np.float32)  # two slots and a background mask
    masks[:, 0, :8] = 1
    masks[:, 1, 8:, :8] = 1
    masks[:, 2, 8:, 8:] = 1
    position = np.zeros((3, 2, 4), np.float32)
    position[:, :, 2] = 0.3
    presence = np.array([[1, 0], [1, 1], [0, 1]], np.float32)
    depth = np.random.default_rng(0).random((3, 16, 16))
    rows = slot_panels(frames, np.zeros((3, 3, 16, 16)), masks, position, presence, depth)
    assert len(rows) == 3 + 1 + 3 and all(len(row) == 3 for row in rows)
    colours = slot_colours(3)
    for k, shown in enumerate(presence.T):
        for t in range(3):
            marked = (rows[4 + k][t] == colours[k]).all(-1).any()
            assert marked == bool(shown[t])
    background = rows[-1]
    assert all(((image == 0) | (image == 200)).all() for image in background)  # never marked
    shown_depth = np.stack(rows[3])
    assert shown_depth.max() == 255 and shown_depth.min() == 0  # over the video's own range
    assert len(slot_panels(frames, np.zeros((3, 3, 16, 16)), masks)) == 6  # without codes
