"""Draws samples/ring.jpg: a gold ring with a gem on a soft backdrop (the README's sample).

Synthetic so that it carries no licence; run `python samples/make_ring.py` to redraw it.
"""

from pathlib import Path

import cv2
import numpy as np

W, H = 900, 1200
yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
backdrop = 235 - 40 * (yy / H) ** 1.5
image = np.stack([backdrop, backdrop * 0.98, backdrop * 0.95], axis=-1)

ring = np.zeros((H, W), np.uint8)
cv2.ellipse(ring, (450, 560), (260, 230), 0, 0, 360, 255, -1)
cv2.ellipse(ring, (450, 560), (200, 175), 0, 0, 360, 0, -1)
shade = 0.75 + 0.25 * np.cos((xx - 450) / 260 * np.pi / 2) * np.cos((yy - 560) / 230 * np.pi / 2)
gold = np.stack([212 * shade, 172 * shade, 60 * shade], axis=-1)
image[ring > 0] = gold[ring > 0]
gem = np.zeros((H, W), np.uint8)
cv2.circle(gem, (450, 345), 55, 255, -1)
sparkle = 0.8 + 0.2 * np.sin(xx / 6) * np.cos(yy / 6)
image[gem > 0] = np.stack([70 * sparkle, 140 * sparkle, 230 * sparkle], axis=-1)[gem > 0]

out = Path(__file__).with_name("ring.jpg")
cv2.imwrite(
    str(out), cv2.cvtColor(np.clip(image, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
)
