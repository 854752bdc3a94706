"""The demo's drawn product pictures: 256-px JPEGs whose shape says the category, whose colours
say the brand, and whose variant (the model) changes size, rotation and colours."""

from __future__ import annotations

import colorsys
import io
import random

from PIL import Image, ImageDraw


def draw_product_image(category: str, brand: str, variant: int) -> bytes:
    """A 256x256 JPEG: the shape says the category, the colours say the brand."""
    brand_rng = random.Random(f"brand:{brand}")
    hue = brand_rng.randrange(360)
    fg = _hsv(hue, 0.75, 0.85)
    accent = _hsv((hue + 150) % 360, 0.6, 0.9)
    bg = _hsv((hue + 30 * variant) % 360, 0.08, 0.97)
    image = Image.new("RGB", (256, 256), bg)
    d = ImageDraw.Draw(image)
    o = 6 * variant
    if category == "Electronics":
        d.rounded_rectangle((40 + o, 60, 216 - o, 180), radius=10, fill=fg, outline=accent, width=6)
        d.rectangle((110, 180, 146, 215), fill=accent)
    elif category == "Clothing":
        d.polygon(
            [
                (70, 50),
                (186, 50),
                (226, 100),
                (196, 120),
                (186, 220),
                (70, 220),
                (60, 120),
                (30, 100),
            ],
            fill=fg,
            outline=accent,
        )
        d.ellipse((108, 40, 148, 70), fill=bg)
    elif category == "Furniture":
        d.rectangle((60, 40 + o, 90, 220), fill=fg)
        d.rectangle((60, 130, 200, 160), fill=fg)
        d.rectangle((170, 160, 200, 220), fill=accent)
    elif category == "Books":
        for i in range(4):
            d.rectangle(
                (50 + i * 8, 60 + i * 38, 210 - i * 8, 92 + i * 38), fill=fg if i % 2 else accent
            )
    elif category == "Jewelry":
        d.ellipse((58 + o, 58 + o, 198 - o, 198 - o), outline=fg, width=18)
        d.regular_polygon((128, 62, 20), 4, fill=accent)
    elif category == "Toys":
        d.regular_polygon((128, 128, 90 - o), 5, rotation=18 * variant, fill=fg, outline=accent)
    else:
        d.ellipse((48, 48, 208, 208), fill=fg)
        d.arc((48, 48, 208, 208), 30 + 10 * variant, 150, fill=accent, width=8)
        d.line((48, 128, 208, 128), fill=accent, width=6)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def _hsv(hue: int, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue / 360, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)
