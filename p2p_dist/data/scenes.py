"""Procedural street scenes: a label map and a photo-like rendering of it (the `scenes` demo set).

A scene is a street seen from its middle: sky above a horizon, a road and two sidewalks meeting
at a vanishing point, rows of buildings along both sides with roof lines converging to it, trees,
and cars, people and poles scaled by their depth. The label map is drawn first; the photo is then
rendered from it with a texture, shading and colour per class (windows on facades, mottled
foliage, asphalt grain, tiled pavement, cloudy sky), per-object colours (cars, clothes), a global
light direction, car shadows and sensor noise. So labels -> photo is learnable and an FCN can
segment the photos. `depth_map` and `near_infrared` give the same scene as a 16-bit depth map and
a near-infrared band (the `scenes-depth` and `scenes-bands` demo sets). Everything is a pure
function of (seed, index, size).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from p2p_dist.data.transforms import resize

# class ids, names and colours of the colour label map (Cityscapes colours for the same classes)
CLASSES = ["road", "sidewalk", "building", "vegetation", "sky", "car", "person", "pole"]
PALETTE = [
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (107, 142, 35),
    (70, 130, 180),
    (0, 0, 142),
    (220, 20, 60),
    (153, 153, 153),
]
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR, PERSON, POLE = range(len(CLASSES))

_FACADES = [(196, 170, 132), (150, 72, 58), (168, 168, 160), (120, 96, 80), (210, 200, 180), (110, 116, 126)]
_CAR_PAINT = [
    (170, 20, 24),
    (20, 40, 120),
    (225, 225, 225),
    (25, 25, 28),
    (120, 124, 130),
    (30, 90, 50),
    (200, 160, 20),
]
_CLOTHES = [(30, 30, 40), (90, 20, 20), (20, 60, 110), (200, 190, 170), (60, 80, 40), (120, 60, 120)]
_SKIN = [(230, 190, 160), (190, 140, 100), (120, 80, 55)]


@dataclass
class Scene:
    """The drawn geometry: label map plus what the renderer needs to know about objects."""

    label: np.ndarray  # HxW uint8 class ids
    instance: np.ndarray  # HxW int32 object ids (0 = none); colours per object
    horizon: float
    buildings: list = field(default_factory=list)  # (instance id, x0, x1, depth scale)
    cars: list = field(default_factory=list)  # (instance id, box x0, y0, x1, y1)
    people: list = field(default_factory=list)  # (instance id, head box)
    trees: list = field(default_factory=list)  # instance ids


def _line_x(p0, p1, y):
    """x on the line p0-p1 at height y."""
    (x0, y0), (x1, y1) = p0, p1
    if y1 == y0:
        return x0
    return x0 + (x1 - x0) * (y - y0) / (y1 - y0)


def layout(rng: np.random.Generator, size: int) -> Scene:
    S = float(size)
    label = Image.new("L", (size, size), SKY)
    inst = Image.new("I", (size, size), 0)
    dl, di = ImageDraw.Draw(label), ImageDraw.Draw(inst)
    h = S * rng.uniform(0.36, 0.52)
    vx = S * rng.uniform(0.32, 0.68)
    next_id = [1]

    def poly(points, cls, draw_instance=True):
        pts = [(float(x), float(y)) for x, y in points]
        dl.polygon(pts, fill=cls)
        oid = 0
        if draw_instance:
            oid = next_id[0]
            next_id[0] += 1
        di.polygon(pts, fill=oid)
        return oid

    def ellipse(box, cls, oid):
        dl.ellipse([float(v) for v in box], fill=cls)
        di.ellipse([float(v) for v in box], fill=oid)

    # ground: grass verges, then sidewalks, then the road, all converging to (vx, h)
    poly([(0, h), (S, h), (S, S), (0, S)], VEGETATION)
    road_l, road_r = vx - S * rng.uniform(0.45, 0.85), vx + S * rng.uniform(0.45, 0.85)
    walk_l, walk_r = road_l - S * rng.uniform(0.25, 0.6), road_r + S * rng.uniform(0.25, 0.6)
    top = S * 0.012
    poly([(vx - 3 * top, h), (vx + 3 * top, h), (walk_r, S), (walk_l, S)], SIDEWALK, False)
    poly([(vx - top, h), (vx + top, h), (road_r, S), (road_l, S)], ROAD, False)
    scene = Scene(label=None, instance=None, horizon=h)  # type: ignore[arg-type]
    edge_l, edge_r = ((vx - 3 * top, h), (walk_l, S)), ((vx + 3 * top, h), (walk_r, S))
    road_edge_l, road_edge_r = ((vx - top, h), (road_l, S)), ((vx + top, h), (road_r, S))

    def ground_y(x, left: bool):
        """Where the facade row meets the ground at column x (the sidewalk's outer edge)."""
        (x0, y0), (x1, y1) = edge_l if left else edge_r
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)

    # facade rows: buildings (and the odd gap with trees) from the image border to the street's end
    for left in (True, False):
        x = 0.0 if left else S
        end = vx - 4 * top if left else vx + 4 * top
        while (x < end - 1) if left else (x > end + 1):
            width = S * rng.uniform(0.08, 0.28) * max(0.25, abs(x - end) / S * 1.6)
            x_next = min(x + width, end) if left else max(x - width, end)
            k = rng.uniform(0.7, 2.8)  # height relative to the distance to the horizon line
            g0, g1 = ground_y(x, left), ground_y(x_next, left)
            pts = [(x, h - k * (g0 - h)), (x_next, h - k * (g1 - h)), (x_next, g1), (x, g0)]
            if rng.random() < 0.18:
                oid = poly(
                    [(x, h - 0.6 * k * (g0 - h)), (x_next, h - 0.6 * k * (g1 - h)), (x_next, g1), (x, g0)], VEGETATION
                )
                scene.trees.append(oid)
            else:
                oid = poly(pts, BUILDING)
                depth = (g0 + g1) / 2 - h
                scene.buildings.append((oid, min(x, x_next), max(x, x_next), max(depth, 1.0) / (S - h)))
            x = x_next

    # objects by depth t in (0, 1]: 0 at the horizon, 1 at the bottom of the image
    objects = []
    for _ in range(rng.integers(0, 3)):
        objects.append(("tree", rng.uniform(0.25, 1.0), rng.random()))
    for _ in range(rng.integers(0, 5)):
        objects.append(("car", rng.uniform(0.12, 0.95), rng.random()))
    for _ in range(rng.integers(0, 4)):
        objects.append(("person", rng.uniform(0.15, 0.95), rng.random()))
    for _ in range(rng.integers(0, 4)):
        objects.append(("pole", rng.uniform(0.2, 1.0), rng.random()))
    objects.sort(key=lambda o: o[1])
    for kind, t, u in objects:
        y = h + t * (S - h)
        rl, rr = _line_x(*road_edge_l, y), _line_x(*road_edge_r, y)
        wl, wr = _line_x(*edge_l, y), _line_x(*edge_r, y)
        side_left = u < 0.5
        if kind == "car":
            w = t * S * rng.uniform(0.28, 0.38)
            ht = w * rng.uniform(0.55, 0.75)
            lo, hi = rl + w / 2, rr - w / 2
            if hi <= lo:
                continue
            cx = lo + (hi - lo) * u
            x0, x1 = cx - w / 2, cx + w / 2
            body_top = y - ht * 0.55
            oid = poly([(x0, y), (x1, y), (x1, body_top), (x0, body_top)], CAR)
            inset = w * rng.uniform(0.12, 0.2)
            cabin = [
                (x0 + w * 0.05, body_top + 1),
                (x1 - w * 0.05, body_top + 1),
                (x1 - inset, y - ht),
                (x0 + inset, y - ht),
            ]
            dl.polygon(cabin, fill=CAR)
            di.polygon(cabin, fill=oid)
            scene.cars.append((oid, x0, y - ht, x1, y))
        elif kind == "person":
            hp = t * S * rng.uniform(0.22, 0.3)
            wp = hp * 0.32
            cx = (wl + (rl - wl) * rng.uniform(0.2, 0.8)) if side_left else (rr + (wr - rr) * rng.uniform(0.2, 0.8))
            oid = next_id[0]
            next_id[0] += 1
            ellipse((cx - wp / 2, y - hp * 0.85, cx + wp / 2, y), PERSON, oid)
            head = (cx - wp * 0.33, y - hp, cx + wp * 0.33, y - hp * 0.8)
            ellipse(head, PERSON, oid)
            scene.people.append((oid, head))
        elif kind == "pole":
            hp = t * S * 0.9
            wp = max(1.5, t * S * 0.018)
            cx = (rl - (rl - wl) * 0.12) if side_left else (rr + (wr - rr) * 0.12)
            poly([(cx - wp / 2, y), (cx + wp / 2, y), (cx + wp / 2, y - hp), (cx - wp / 2, y - hp)], POLE)
        else:  # a street tree: trunk and crown, both vegetation
            hp = t * S * rng.uniform(0.5, 0.8)
            cx = (wl + (rl - wl) * 0.3) if side_left else (rr + (wr - rr) * 0.7)
            wt = max(1.5, t * S * 0.025)
            oid = poly(
                [(cx - wt / 2, y), (cx + wt / 2, y), (cx + wt / 2, y - hp * 0.6), (cx - wt / 2, y - hp * 0.6)],
                VEGETATION,
            )
            r = hp * rng.uniform(0.22, 0.32)
            for _ in range(4):
                ox, oy = rng.normal(0, r * 0.35, 2)
                ellipse((cx + ox - r, y - hp * 0.7 + oy - r, cx + ox + r, y - hp * 0.7 + oy + r), VEGETATION, oid)
            scene.trees.append(oid)
    scene.label = np.asarray(label, dtype=np.uint8).copy()
    scene.instance = np.asarray(inst, dtype=np.int32).copy()
    return scene


# --- rendering ---------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Noise in [-1, 1] with features about size/cells pixels wide."""
    grid = rng.uniform(0, 255, (cells, cells)).astype(np.uint8)
    return resize(grid, (size, size)).astype(np.float32) / 127.5 - 1.0


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """The photo (uint8 HxWx3) of a scene."""
    label, inst = scene.label, scene.instance
    size = label.shape[0]
    S = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.zeros((size, size, 3), np.float32)
    h = scene.horizon
    fine = rng.normal(0, 1, (size, size)).astype(np.float32)

    # sky: gradient towards a pale horizon, soft clouds
    m = label == SKY
    if m.any():
        tsky = np.clip(yy / max(h, 1.0), 0, 1)[..., None]
        top_c, low_c = np.array([60, 110, 190], np.float32), np.array([185, 210, 235], np.float32)
        sky = top_c * (1 - tsky) + low_c * tsky
        clouds = np.clip(_smooth_noise(rng, size, 5) * 1.4 - 0.2, 0, 1)[..., None] * rng.uniform(0.3, 0.9)
        sky = sky * (1 - clouds) + 245 * clouds
        img[m] = sky[m]

    # road: asphalt grain, darker near the camera
    m = label == ROAD
    base = rng.uniform(70, 100)
    asphalt = base + 7 * fine + 6 * _smooth_noise(rng, size, 16) - 12 * np.clip((yy - h) / (S - h + 1), 0, 1)
    img[m] = np.stack([asphalt, asphalt, asphalt * 1.03], -1)[m]

    # sidewalk: light tiles with dark joints
    m = label == SIDEWALK
    tile = max(3.0, S / 28)
    joints = ((np.mod(xx + 0.6 * yy, tile) < 1.0) | (np.mod(yy, tile * 0.7) < 1.0)).astype(np.float32)
    walk = rng.uniform(165, 200) + 4 * fine - 45 * joints
    img[m] = np.stack([walk, walk * 0.97, walk * 0.92], -1)[m]

    # vegetation: mottled greens, darker in the crowns' shade
    m = label == VEGETATION
    leaves = _smooth_noise(rng, size, max(4, size // 6)) * 0.6 + _smooth_noise(rng, size, max(4, size // 3)) * 0.4
    g = np.stack([50 + 25 * leaves, 105 + 45 * leaves, 35 + 15 * leaves], -1) + 6 * fine[..., None]
    img[m] = g[m]

    boxes = ndimage.find_objects(inst)

    def region(oid):
        """(slices, mask) of object `oid` within its bounding box; None when it is fully hidden."""
        sl = boxes[oid - 1] if oid - 1 < len(boxes) else None
        if sl is None:
            return None
        return sl, inst[sl] == oid

    # buildings: a facade colour per building, window grids scaled by depth
    for oid, _x0, _x1, depth in scene.buildings:
        colour = np.array(_FACADES[rng.integers(len(_FACADES))], np.float32) * rng.uniform(0.85, 1.1)
        pitch = max(3.0, S * 0.08 * depth + 2)
        wx, wy = rng.uniform(0, pitch, 2)
        tint = 20 * rng.random()
        found = region(oid)
        if found is None:
            continue
        sl, m = found
        Y, X, F = yy[sl], xx[sl], fine[sl][..., None]
        windows = (np.mod(X + wx, pitch) < pitch * 0.55) & (np.mod(Y + wy, pitch * 1.2) < pitch * 0.6)
        facade = colour + 5 * F
        glass = np.array([45, 55, 70], np.float32) + tint + 5 * F
        img[sl][m] = np.where(windows[..., None], glass, facade)[m]

    # cars: paint, dark windows on the cabin, wheels, a shadow on the road
    for oid, x0, y0, x1, y1 in scene.cars:
        paint = np.array(_CAR_PAINT[rng.integers(len(_CAR_PAINT))], np.float32)
        w = x1 - x0
        found = region(oid)
        if found is not None:
            sl, m = found
            Y, X, F = yy[sl], xx[sl], fine[sl][..., None]
            shine = 1.0 + 0.25 * np.clip(1 - (Y - y0) / max(y1 - y0, 1.0), 0, 1)[..., None]
            body = paint * shine + 4 * F
            cabin = (y0 + (y1 - y0) * 0.45 > Y)[..., None]
            body = np.where(cabin, np.array([40, 48, 60], np.float32) + 8 * F, body)
            for cx in (x0 + w * 0.18, x1 - w * 0.18):
                r = w * 0.11
                wheel = (X - cx) ** 2 + ((Y - y1 + r * 0.6) * 1.2) ** 2 < r * r
                body[wheel] = 20
            img[sl][m] = body[m]
        top, bottom = int(max(0, y1 - w * 0.15)), int(min(size, y1 + w * 0.15 + 1))
        left, right = int(max(0, x0 - w * 0.2)), int(min(size, x1 + w * 0.2 + 1))
        if bottom > top and right > left:
            sl = (slice(top, bottom), slice(left, right))
            Y, X = yy[sl], xx[sl]
            shadow = (label[sl] == ROAD) & (((X - (x0 + x1) / 2) / (w * 0.6)) ** 2 + ((Y - y1) / (w * 0.12)) ** 2 < 1)
            img[sl][shadow] *= 0.55

    # people: clothes and a head
    for oid, head in scene.people:
        clothes = np.array(_CLOTHES[rng.integers(len(_CLOTHES))], np.float32)
        skin = np.array(_SKIN[rng.integers(len(_SKIN))], np.float32)
        found = region(oid)
        if found is None:
            continue
        sl, m = found
        is_head = (yy[sl] <= head[3])[..., None]
        img[sl][m] = np.where(is_head, skin, clothes)[m] + 4 * fine[sl][m][:, None]

    # poles: metal with a vertical highlight
    m = label == POLE
    if m.any():
        metal = 120 + 40 * np.cos(xx * 1.7) + 4 * fine
        img[m] = np.stack([metal, metal, metal * 1.05], -1)[m]

    # light: a global direction and brightness, then noise and a little lens softness
    light = rng.uniform(-0.18, 0.18)
    gain = rng.uniform(0.85, 1.12) * (1 + light * (xx / S - 0.5) * 2)
    img = img * gain[..., None] + rng.normal(0, 3.0, img.shape).astype(np.float32)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.5))
    return np.asarray(out)


def colourize(label: np.ndarray, palette=PALETTE) -> np.ndarray:
    """Class ids -> the colour label map (ids outside the palette are black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    return lut[label]


def _rng(seed: int, index: int, split: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, {"train": 1, "val": 2, "test": 3}.get(split, 9), index, *extra])


def make_scene(
    seed: int, index: int, size: int = 256, split: str = "train"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(photo HxWx3, colour label map HxWx3, class ids HxW) of scene `index` of a split."""
    photo, scene = make_scene_layout(seed, index, size, split)
    return photo, colourize(scene.label), scene.label


def make_scene_layout(seed: int, index: int, size: int = 256, split: str = "train") -> tuple[np.ndarray, Scene]:
    """(photo HxWx3, the drawn Scene) of scene `index` of a split."""
    rng = _rng(seed, index, split)
    scene = layout(rng, size)
    return render(scene, rng), scene


CAMERA_HEIGHT = 1.6  # metres above the ground; the focal length is the image width in pixels
_VERGE = 1  # instance id of the layout's first polygon: the grass verge under everything


def depth_map(scene: Scene) -> np.ndarray:
    """Distance from the camera in millimetres, uint16 HxW (65535: the sky and everything beyond
    65.5 m). The ground (road, sidewalks, verge) is a plane CAMERA_HEIGHT below the camera, whose
    row y lies at size * height / (y - horizon); every other object stands upright where its lowest
    visible pixel meets what is below it (never nearer than that)."""
    label, inst = scene.label, scene.instance
    size = label.shape[0]
    ground = np.isin(label, (ROAD, SIDEWALK)) | (inst == _VERGE)
    obj = np.where(inst > 0, inst, -1 - label.astype(np.int32))  # objects without an id: runs of a class
    rows = np.arange(size, dtype=np.float64)
    plane = size * CAMERA_HEIGHT / np.maximum(rows - scene.horizon, 0.5)
    depth = np.empty((size, size), np.float64)
    below = np.full(size, plane[-1])  # what each column holds under the current row
    under = np.zeros(size, np.int32)
    for y in range(size - 1, -1, -1):
        same = obj[y] == under
        row = np.where(ground[y], plane[y], np.where(same, below, np.maximum(plane[min(y + 1, size - 1)], below)))
        depth[y], below, under = row, row, np.where(ground[y], 0, obj[y])
    depth[label == SKY] = np.inf
    return np.clip(np.round(depth * 1000), 0, 65535).astype(np.uint16)


# near-infrared reflectance per class (vegetation bright, asphalt and sky dark), as 0..1
_NIR = {ROAD: 0.12, SIDEWALK: 0.28, BUILDING: 0.3, VEGETATION: 0.62, SKY: 0.06, CAR: 0.22, PERSON: 0.4, POLE: 0.18}


def near_infrared(scene: Scene, photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A near-infrared band of the scene, uint16 HxW: each class's reflectance, shaded by the photo's
    brightness, with smooth variation (foliage differs from tree to tree) and sensor noise."""
    size = photo.shape[0]
    lut = np.zeros(256, np.float32)
    for cls, value in _NIR.items():
        lut[cls] = value
    luma = photo.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    nir = lut[scene.label] * (0.55 + 0.6 * luma) * (1 + 0.15 * _smooth_noise(rng, size, 6))
    nir += rng.normal(0, 0.004, nir.shape).astype(np.float32)
    return np.clip(np.round(nir * 65535), 0, 65535).astype(np.uint16)


def sixteen_bit(photo: np.ndarray) -> np.ndarray:
    """uint8 -> uint16 on the same scale (x * 257: 255 -> 65535)."""
    return photo.astype(np.uint16) * 257


def grey16(photo: np.ndarray) -> np.ndarray:
    """The photo's luma (ITU-R 601) at 16 bits, uint16 HxW: values between the 8-bit steps occur."""
    luma = photo.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) * 257
    return np.clip(np.round(luma), 0, 65535).astype(np.uint16)
