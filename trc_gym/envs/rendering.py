"""A small pygame canvas in world coordinates, shared by the envs' `draw` methods."""

from __future__ import annotations

import numpy as np

SIZE = 500
BACKGROUND = (255, 255, 255)
TARGET = (40, 170, 60)
BODY = (50, 90, 200)
DARK = (40, 40, 40)
WARN = (220, 60, 50)


class Canvas:
    """A ``SIZE x SIZE`` pygame surface showing the world box ``[x0, x1] x [y0, y1]``."""

    def __init__(self, x0: float, x1: float, y0: float, y1: float):
        import pygame

        self.pygame = pygame
        self.box = (x0, x1, y0, y1)
        self.surface = pygame.Surface((SIZE, SIZE))
        self.surface.fill(BACKGROUND)

    def px(self, x: float, y: float) -> tuple[int, int]:
        x0, x1, y0, y1 = self.box
        return (round((x - x0) / (x1 - x0) * SIZE), round((y1 - y) / (y1 - y0) * SIZE))

    def length(self, d: float) -> int:
        return max(1, round(d / (self.box[1] - self.box[0]) * SIZE))

    def line(self, a, b, color=DARK, width: int = 2) -> None:
        self.pygame.draw.line(self.surface, color, self.px(*a), self.px(*b), width)

    def circle(self, center, radius: float, color=BODY, width: int = 0) -> None:
        self.pygame.draw.circle(self.surface, color, self.px(*center), self.length(radius), width)

    def polygon(self, points, color=BODY, width: int = 0) -> None:
        self.pygame.draw.polygon(self.surface, color, [self.px(*p) for p in points], width)

    def rect(self, center, width: float, height: float, color=BODY, angle: float = 0.0) -> None:
        """A filled rectangle (world units) rotated by ``angle`` radians about its centre."""
        c, s = np.cos(angle), np.sin(angle)
        corners = [(-width / 2, -height / 2), (width / 2, -height / 2),
                   (width / 2, height / 2), (-width / 2, height / 2)]
        self.polygon([(center[0] + c * a - s * b, center[1] + s * a + c * b) for a, b in corners],
                     color)

    def time_bar(self, fraction_left: float) -> None:
        """A bar along the top edge: the fraction of the horizon still to run."""
        self.pygame.draw.rect(self.surface, (200, 200, 200), (0, 0, SIZE, 6))
        self.pygame.draw.rect(self.surface, DARK, (0, 0, int(SIZE * fraction_left), 6))

    def array(self) -> np.ndarray:
        """The picture as ``[SIZE, SIZE, 3]`` uint8 RGB."""
        return np.transpose(np.array(self.pygame.surfarray.pixels3d(self.surface)), (1, 0, 2))

    def show(self, screen, fps: int):
        """Blit onto the human-mode window (created on first use); returns the window."""
        pygame = self.pygame
        if screen is None:
            pygame.init()
            pygame.display.init()
            screen = pygame.display.set_mode((SIZE, SIZE))
        screen.blit(self.surface, (0, 0))
        pygame.event.pump()
        pygame.display.flip()
        pygame.time.Clock().tick(fps)
        return screen
