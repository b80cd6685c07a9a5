"""The one face module (data_tools/faces.py) as eval and data build use it: SCRFD fed RGB as insightface
feeds it, insightface's NMS, the OpenCV Haar fallback on a real photograph, face tracks with misses, and
the SyncNet crop protocols."""
import numpy as np
import pytest

from data_tools.faces import HaarFaceDetector, OnnxFaceDetector, load_face_detector, nms, stable_crop
from data_tools.toy_sources import TOY_LANDMARKS, write_toy_scrfd
from eval.faces import crop_square, crop_syncnet_python, face_track

GREY = (128, 128, 128)
FACE = (225, 180, 150)  # red-dominant: what the toy SCRFD finds
DECOY = FACE[::-1]  # the same square with R and B swapped: found only by a detector fed BGR


def _scene(height=384, width=512, face=(64, 64), decoy=(256, 128), side=192):
    """A frame twice the toy detector's 256-px input: the face and decoy squares land on its 32-px grid."""
    frame = np.full((height, width, 3), GREY, np.uint8)
    frame[face[1]:face[1] + side, face[0]:face[0] + side] = FACE
    if decoy is not None:
        frame[decoy[1]:decoy[1] + side, decoy[0]:decoy[0] + side] = DECOY
    return frame


@pytest.fixture(scope="module")
def toy_scrfd(tmp_path_factory):
    return OnnxFaceDetector(str(write_toy_scrfd(tmp_path_factory.mktemp("det") / "det_10g.onnx")))


def test_scrfd_is_fed_rgb_like_insightface(toy_scrfd):
    frame = _scene()
    boxes, marks = toy_scrfd.detect_with_landmarks(frame)
    assert toy_scrfd.kind == "scrfd" and toy_scrfd.name == "scrfd"
    np.testing.assert_allclose(boxes[0, :4], [64, 64, 256, 256], atol=1e-3)  # letterbox 0.5 undone
    np.testing.assert_allclose(marks[0], 64 + TOY_LANDMARKS * 192, atol=1e-3)
    # the detector really tells the channel orders apart: fed BGR, its top box is the decoy, 192 px away
    swapped = toy_scrfd.detect(np.ascontiguousarray(frame[..., ::-1]))
    np.testing.assert_allclose(swapped[0, :4], [256, 128, 448, 320], atol=1e-3)


def test_face_track_counts_and_fills_frames_without_a_face(toy_scrfd):
    frames = np.stack([_scene(), _scene(face=(128, 64), decoy=None), np.full((384, 512, 3), GREY, np.uint8),
                       _scene(face=(192, 64), decoy=None)])
    boxes, marks, found = face_track(frames, toy_scrfd)
    assert found.tolist() == [True, True, False, True]
    np.testing.assert_allclose(boxes[[0, 1, 3], 0], [64, 128, 192], atol=1e-3)
    np.testing.assert_allclose(boxes[2], [160, 64, 352, 256], atol=1e-3)  # halfway between its neighbours
    assert np.isfinite(marks).all()
    none = face_track(np.full((2, 64, 64, 3), GREY, np.uint8), toy_scrfd)
    assert not none[2].any() and np.isnan(none[0]).all()


def test_nms_adds_one_to_widths_and_heights_as_insightface():
    # IoU 2/6 = 0.33 on the plain areas, 6/12 = 0.5 with insightface's +1: suppressed at its threshold 0.4
    boxes = np.array([[0, 0, 2, 2, 0.9], [1, 0, 3, 2, 0.8], [10, 10, 12, 12, 0.7]], np.float32)
    assert nms(boxes, 0.4).tolist() == [0, 2]


def test_haar_fallback_finds_the_face_in_a_real_photograph():
    from skimage import data as skimage_data  # a dev dependency: the photograph ships with it
    image = skimage_data.astronaut()  # 512x512 RGB portrait; the face spans about x 175-272, y 65-165
    detector = load_face_detector(None)
    assert isinstance(detector, HaarFaceDetector) and detector.name == "opencv_haar"
    boxes = detector.detect(image)
    assert len(boxes) == 1
    x0, y0, x1, y1 = boxes[0, :4]
    assert 160 < x0 < 195 and 250 < x1 < 290 and 50 < y0 < 85 and 145 < y1 < 185
    # the build's crop around it keeps the whole face, and the mouth box lands on the lower face
    crop = stable_crop([boxes[0, :4]], 512, 512, margin=0.4)
    assert crop.x0 <= x0 and crop.y0 <= y0 and crop.x0 + crop.side >= x1 and crop.y0 + crop.side >= y1
    mx0, my0, mx1, my1 = np.array(crop.mouth_box()) * crop.side + [crop.x0, crop.y0] * 2
    assert x0 < mx0 < mx1 < x1 and (y0 + y1) / 2 < my0 < my1 < y1 + 5
    # the Haar cascade sees grey: feeding BGR changes nothing, and no landmarks are claimed
    assert np.allclose(detector.detect(np.ascontiguousarray(image[..., ::-1]))[:, :4], boxes[:, :4], atol=2)
    assert detector.detect_with_landmarks(image)[1] is None
    assert len(detector.detect(np.full((240, 320, 3), 90, np.uint8))) == 0


def test_syncnet_python_crop_truncates_and_median_filters_the_track():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (15, 120, 160, 3), dtype=np.uint8)
    box = np.array([50.7, 30.2, 90.9, 75.6])
    boxes = np.repeat(box[None], 15, 0)
    boxes[7] += 25  # one outlier detection in the track
    crops = crop_syncnet_python(frames, boxes)
    # the median filter removes the outlier: frame 7 is cut exactly like its neighbours' box, edges int()
    import cv2

    bs = max(box[3] - box[1], box[2] - box[0]) / 2
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    pad = int(bs * 1.8)
    padded = np.pad(frames[7], ((pad, pad), (pad, pad), (0, 0)), constant_values=110)
    my, mx = cy + pad, cx + pad
    want = cv2.resize(padded[int(my - bs):int(my + bs * 1.8), int(mx - bs * 1.4):int(mx + bs * 1.4)], (224, 224))
    np.testing.assert_array_equal(crops[7], want.astype(np.float32))
    # the per-frame protocol follows the outlier instead
    per_frame = crop_square(frames[7:8].astype(np.float32), boxes[7])
    assert np.abs(per_frame[0] - crops[7]).mean() > 20
