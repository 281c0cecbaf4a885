"""A fast quark/gluon jet-image simulator: the default data on a machine without the real E2E files.

It is a toy, but every feature that separates quark from gluon jets in reality comes from physics,
not from a hand-set class difference:

1. **Parton shower** (double-logarithmic, angular ordered). A parton of flavour ``f`` emits gluons
   with density ``dN = (2 C_f alpha_s(kT) / pi) (dtheta / theta) (dz / z)`` above a cut-off
   ``kT = z theta pT > kt_min``. The colour factor is C_F = 4/3 for quarks and C_A = 3 for gluons,
   so gluon jets emit C_A / C_F = 9/4 times as often: they end up with more constituents and wider.
   Emitted gluons radiate once more inside their own (smaller) angle.
2. **Hadronisation.** Each parton turns into ``1 + Poisson(a ln(1 + E / 1 GeV))`` hadrons (gluons,
   being colour octets, into ``gluon_hadron_ratio`` times more), sharing its momentum like a
   Dirichlet draw whose concentration is larger for gluons (softer fragmentation), with a
   transverse-momentum kick of ``kt_hadron`` GeV. Hadrons are charged (60 %), neutral pions that
   decay to two photons (30 %) or neutral hadrons (10 %).
3. **Pile-up / underlying event**: soft particles spread uniformly over the image, the same for
   both classes.
4. **Detector**, imaged at ECAL granularity (0.0174 in eta and phi, 125 x 125 pixels, centred on
   the jet): tracks (efficiency, pT threshold, 1 % resolution) at the particle direction; charged
   particles bend in the 3.8 T field before reaching the calorimeters (loopers never arrive);
   photons shower in the ECAL; hadrons leave a MIP or an early shower in the ECAL and the rest in
   the HCAL, which reads out 5 x 5-crystal towers (each tower's energy spread evenly over its 25
   pixels, as in the E2E files); calorimeter resolution ``a/sqrt(E) (+) b``, electronic noise and
   zero suppression.

Output follows the ML4SCI layout (``X_jets`` (N, 125, 125, 3) channels-last, ``y`` 1 = quark,
``pt``, ``m0``), so simulated and real files share one reading path. Everything is vectorised
over chunks of jets (about 2,000 jets/s on one core, file writing included); each chunk has its own
seed from ``numpy.random.SeedSequence``, and the same seed gives a bit-identical file.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from e2essl.config import SimulateConfig

C_F = 4.0 / 3.0  # quark colour factor
C_A = 3.0  # gluon colour factor
PIXEL = 0.0174  # ECAL crystal size in eta and phi (REFERENCE.md)
TOWER = 5  # an HCAL tower spans 5 x 5 crystals
CHUNK = 256  # jets per independently seeded chunk: fixed, so files do not depend on batching
MZ = 91.1876
N_FLAVOURS = 5
B0 = (33.0 - 2.0 * N_FLAVOURS) / (12.0 * math.pi)
PION_MASS = 0.135
R_ECAL = 1.29  # m, radius of the CMS ECAL barrel front face

# Particle species codes.
CHARGED, PHOTON, NEUTRAL_HADRON = 0, 1, 2


@dataclass
class Particles:
    """A flat bag of particles for a chunk of jets; ``jet`` says which jet each belongs to."""

    jet: np.ndarray  # (P,) int64
    pt: np.ndarray  # (P,) float64, GeV
    eta: np.ndarray  # (P,) float64, relative to the jet axis
    phi: np.ndarray  # (P,) float64, relative to the jet axis

    def take(self, mask: np.ndarray) -> Particles:
        return Particles(self.jet[mask], self.pt[mask], self.eta[mask], self.phi[mask])

    @staticmethod
    def concat(parts: list[Particles]) -> Particles:
        return Particles(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("jet", "pt", "eta", "phi")))


@dataclass
class JetChunk:
    """Simulated jets: images channels-last, as the ML4SCI files hold them."""

    images: np.ndarray  # (N, H, W, 3) float32: Tracks, ECAL, HCAL
    y: np.ndarray  # (N,) int64, 1 = quark, 0 = gluon
    pt: np.ndarray  # (N,) float32, particle-level jet pT in GeV
    m0: np.ndarray  # (N,) float32, particle-level jet mass in GeV


def alpha_s(kt: np.ndarray, cfg: SimulateConfig) -> np.ndarray:
    """One-loop running coupling, frozen below ``kt_freeze``."""
    k = np.maximum(kt, cfg.kt_freeze)
    return cfg.alpha_s_mz / (1.0 + B0 * cfg.alpha_s_mz * np.log(k**2 / MZ**2))


def _emit(
    rng: np.random.Generator,
    parent_pt: np.ndarray,
    parent_theta_max: np.ndarray,
    colour: np.ndarray,
    cfg: SimulateConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gluon emissions off each parent in the double-log approximation, with running coupling.

    Emissions are uniform in the triangle ``0 < ln(theta_max/theta), ln(1/z)`` with
    ``z theta pT > kt_min``, at the coupling's maximum rate, then thinned by ``alpha_s(kT)/alpha_max``.
    Returns (parent index, z, theta, azimuth) per emission.
    """
    log_range = np.log(np.maximum(parent_pt * parent_theta_max / cfg.kt_min, 1.0))  # (P,)
    alpha_max = float(alpha_s(np.array(cfg.kt_min), cfg))
    mean = 2.0 * colour * alpha_max / math.pi * 0.5 * log_range**2
    counts = rng.poisson(mean)
    parent = np.repeat(np.arange(len(parent_pt)), counts)
    a, b = rng.random(len(parent)), rng.random(len(parent))
    flip = a + b > 1.0
    a[flip], b[flip] = 1.0 - a[flip], 1.0 - b[flip]
    theta = parent_theta_max[parent] * np.exp(-a * log_range[parent])
    z = np.exp(-b * log_range[parent])
    kt = z * theta * parent_pt[parent]
    keep = rng.random(len(parent)) < alpha_s(kt, cfg) / alpha_max
    keep &= z < 0.5  # the harder branch stays the parent
    azimuth = rng.uniform(0.0, 2.0 * math.pi, keep.sum())
    return parent[keep], z[keep], theta[keep], azimuth


def _shower(rng: np.random.Generator, is_quark: np.ndarray, jet_pt: np.ndarray, cfg: SimulateConfig):
    """Partons of each jet: the leading parton plus two generations of gluon emissions.

    Returns (jet index, pT, eta, phi, is_gluon) per parton.
    """
    n = len(jet_pt)
    colour = np.where(is_quark, C_F, C_A)
    parent, z, theta, azi = _emit(rng, jet_pt, np.full(n, cfg.jet_radius), colour, cfg)
    # Energy bookkeeping: emissions take z of the leading parton's pT; cap the total at 0.9.
    z_sum = np.bincount(parent, weights=z, minlength=n)
    shrink = np.where(z_sum > 0.9, 0.9 / np.maximum(z_sum, 1e-12), 1.0)
    g1_pt = z * shrink[parent] * jet_pt[parent]
    lead_pt = jet_pt - np.bincount(parent, weights=g1_pt, minlength=n)
    g1_eta, g1_phi = theta * np.cos(azi), theta * np.sin(azi)
    # Secondary emissions off the first-generation gluons, inside their own angle.
    p2, z2, th2, az2 = _emit(rng, g1_pt, theta, np.full(len(g1_pt), C_A), cfg)
    z2_sum = np.bincount(p2, weights=z2, minlength=len(g1_pt))
    shrink2 = np.where(z2_sum > 0.9, 0.9 / np.maximum(z2_sum, 1e-12), 1.0)
    g2_pt = z2 * shrink2[p2] * g1_pt[p2]
    g1_pt = g1_pt - np.bincount(p2, weights=g2_pt, minlength=len(g1_pt))
    g2_eta = g1_eta[p2] + th2 * np.cos(az2)
    g2_phi = g1_phi[p2] + th2 * np.sin(az2)
    jet = np.concatenate([np.arange(n), parent, parent[p2]])
    pt = np.concatenate([lead_pt, g1_pt, g2_pt])
    eta = np.concatenate([np.zeros(n), g1_eta, g2_eta])
    phi = np.concatenate([np.zeros(n), g1_phi, g2_phi])
    is_gluon = np.concatenate([~is_quark, np.ones(len(parent) + len(p2), dtype=bool)])
    return jet, pt, eta, phi, is_gluon


def _hadronise(rng: np.random.Generator, jet, pt, eta, phi, is_gluon, cfg: SimulateConfig):
    """Each parton fragments into hadrons; returns hadrons with a species code."""
    mean = cfg.hadrons_per_log_energy * np.log1p(pt) * np.where(is_gluon, cfg.gluon_hadron_ratio, 1.0)
    counts = 1 + rng.poisson(mean)
    parton = np.repeat(np.arange(len(pt)), counts)
    conc = np.where(is_gluon, cfg.gluon_fragmentation_concentration, cfg.quark_fragmentation_concentration)
    share = rng.gamma(conc[parton])
    share /= np.bincount(parton, weights=share, minlength=len(pt))[parton]
    h_pt = share * pt[parton]
    # Transverse momentum relative to the parton: a 2-D Gaussian kick, angle = kT / pT.
    kick = rng.normal(0.0, cfg.kt_hadron, size=(2, len(parton))) / np.maximum(h_pt, 1e-3)
    kick = np.clip(kick, -1.0, 1.0)
    h = Particles(jet[parton], h_pt, eta[parton] + kick[0], phi[parton] + kick[1])
    species = rng.choice(3, size=len(parton), p=[cfg.charged_fraction, cfg.pi0_fraction, 1 - cfg.charged_fraction - cfg.pi0_fraction])
    return h, species


def _pi0_decays(rng: np.random.Generator, pi0: Particles) -> Particles:
    """pi0 -> gamma gamma with the energy split u, 1-u and opening angle about 2 m_pi / E."""
    u = rng.random(len(pi0.pt))
    opening = np.minimum(2.0 * PION_MASS / np.maximum(pi0.pt, 1e-3), 0.5)
    azi = rng.uniform(0.0, 2.0 * math.pi, len(u))
    d_eta, d_phi = opening * np.cos(azi), opening * np.sin(azi)
    # Momentum balance: the softer photon sits farther from the pion direction.
    first = Particles(pi0.jet, u * pi0.pt, pi0.eta + (1 - u) * d_eta, pi0.phi + (1 - u) * d_phi)
    second = Particles(pi0.jet, (1 - u) * pi0.pt, pi0.eta - u * d_eta, pi0.phi - u * d_phi)
    return Particles.concat([first, second])


def _pileup(rng: np.random.Generator, n: int, cfg: SimulateConfig, half_width: float):
    """Soft particles, uniform over the image: the same for quark and gluon jets."""
    counts = rng.poisson(cfg.pileup_mean, n)
    jet = np.repeat(np.arange(n), counts)
    m = len(jet)
    p = Particles(
        jet, 0.1 + rng.exponential(cfg.pileup_pt_mean, m), rng.uniform(-half_width, half_width, m), rng.uniform(-half_width, half_width, m)
    )
    species = rng.choice(3, size=m, p=[cfg.charged_fraction, cfg.pi0_fraction, 1 - cfg.charged_fraction - cfg.pi0_fraction])
    # Tracks from other vertices are mostly removed by vertex association.
    from_other_vertex = rng.random(m) > cfg.pileup_track_fraction
    return p, species, from_other_vertex


def _pixel_index(p: Particles, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row (eta) and column (phi) of each particle, and whether it lands inside the image."""
    half = size / 2.0
    row = np.floor(p.eta / PIXEL + half).astype(np.int64)
    col = np.floor(p.phi / PIXEL + half).astype(np.int64)
    inside = (row >= 0) & (row < size) & (col >= 0) & (col < size)
    return row, col, inside


def _accumulate(p: Particles, n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum particle pT per pixel; returns the image sparsely: (sorted flat pixel index, value).

    The flat index is ``(jet * size + row) * size + col``. Working sparsely keeps the cost
    proportional to the deposits, not to the 15,625 pixels of each image.
    """
    row, col, inside = _pixel_index(p, size)
    flat = (p.jet[inside] * size + row[inside]) * size + col[inside]
    return _sum_duplicates(flat, p.pt[inside])


def _sum_duplicates(flat: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge entries that share a flat index by summing their values."""
    unique, inverse = np.unique(flat, return_inverse=True)
    return unique, np.bincount(inverse, weights=value, minlength=len(unique))


def _smear(rng: np.random.Generator, energy: np.ndarray, stochastic: float, constant: float) -> np.ndarray:
    """Calorimeter response: a Gamma draw with mean E and variance (a^2 E + b^2 E^2), never negative."""
    var = stochastic**2 * energy + constant**2 * energy**2
    shape = energy**2 / np.maximum(var, 1e-12)
    return rng.gamma(shape, energy / shape)


def _add_noise(
    rng: np.random.Generator, flat: np.ndarray, value: np.ndarray, n_cells: int, sigma: float, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian noise on every cell, then zero suppression below ``threshold`` (sparse in and out).

    Cells without a deposit only matter where the noise alone passes the threshold, so they are
    drawn directly from the Gaussian tail (count ~ Poisson, value ~ threshold + exponential),
    not cell by cell.
    """
    value = value + rng.normal(0.0, sigma, len(value)) if sigma > 0 else value
    if sigma > 0:
        tail = 0.5 * math.erfc(threshold / (sigma * math.sqrt(2.0)))
        n_noise = rng.poisson(tail * n_cells)
        where = rng.integers(0, n_cells, n_noise)
        # The Gaussian tail above t is close to t + Exponential(sigma^2 / t).
        noise = threshold + rng.exponential(sigma**2 / threshold, n_noise)
        flat, value = _sum_duplicates(np.concatenate([flat, where]), np.concatenate([value, noise]))
    keep = value >= threshold
    return flat[keep], value[keep]


def _jet_kinematics(h: Particles, n: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Particle-level jet pT and mass from massless hadrons within ``radius`` of the axis."""
    inside = np.hypot(h.eta, h.phi) < radius
    j, pt, eta, phi = h.jet[inside], h.pt[inside], h.eta[inside], h.phi[inside]
    px = np.bincount(j, weights=pt * np.cos(phi), minlength=n)
    py = np.bincount(j, weights=pt * np.sin(phi), minlength=n)
    pz = np.bincount(j, weights=pt * np.sinh(eta), minlength=n)
    e = np.bincount(j, weights=pt * np.cosh(eta), minlength=n)
    m2 = np.maximum(e**2 - px**2 - py**2 - pz**2, 0.0)
    return np.hypot(px, py), np.sqrt(m2)


def simulate_chunk(rng: np.random.Generator, is_quark: np.ndarray, cfg: SimulateConfig, size: int = 125) -> JetChunk:
    """Simulate one jet per entry of ``is_quark`` (bool (N,)) and image it on ``size`` x ``size`` pixels."""
    n = len(is_quark)
    # Jet pT from a falling power law dN/dpT ~ pT^-k between pt_min and pt_max (inverse CDF).
    a = 1.0 - cfg.pt_power
    u = rng.random(n)
    jet_pt = (cfg.pt_min**a + u * (cfg.pt_max**a - cfg.pt_min**a)) ** (1.0 / a)

    partons = _shower(rng, is_quark, jet_pt, cfg)
    hadrons, species = _hadronise(rng, *partons, cfg)
    # Re-centre each jet on its pT-weighted axis, as the E2E images are centred on the jet.
    sum_pt = np.bincount(hadrons.jet, weights=hadrons.pt, minlength=n)
    hadrons.eta -= (np.bincount(hadrons.jet, weights=hadrons.pt * hadrons.eta, minlength=n) / sum_pt)[hadrons.jet]
    hadrons.phi -= (np.bincount(hadrons.jet, weights=hadrons.pt * hadrons.phi, minlength=n) / sum_pt)[hadrons.jet]
    pt, m0 = _jet_kinematics(hadrons, n, cfg.jet_radius)

    pu, pu_species, pu_other_vertex = _pileup(rng, n, cfg, half_width=size * PIXEL / 2.0)
    particles = Particles.concat([hadrons, pu])
    species = np.concatenate([species, pu_species])
    other_vertex = np.concatenate([np.zeros(len(hadrons.pt), dtype=bool), pu_other_vertex])

    charged = particles.take(species == CHARGED)
    charged_other_vertex = other_vertex[species == CHARGED]
    photons = _pi0_decays(rng, particles.take(species == PHOTON))
    neutral = particles.take(species == NEUTRAL_HADRON)

    # Tracks: at the particle direction, with efficiency, threshold and 1 % pT resolution.
    found = (rng.random(len(charged.pt)) < cfg.track_efficiency) & (charged.pt > cfg.track_pt_min) & ~charged_other_vertex
    tracks = charged.take(found)
    tracks.pt = tracks.pt * (1.0 + cfg.track_resolution * rng.standard_normal(len(tracks.pt)))
    track_pixels = _accumulate(tracks, n, size)

    # Charged particles bend in phi before the calorimeters; loopers never reach them.
    bend = 0.3 * cfg.b_field * R_ECAL / (2.0 * charged.pt)
    arrives = bend < 1.0
    calo_charged = charged.take(arrives)
    sign = rng.choice(np.array([-1.0, 1.0]), size=len(calo_charged.pt))
    calo_charged.phi = calo_charged.phi + sign * np.arcsin(bend[arrives])
    # Charged hadrons: a MIP in the ECAL (half the time) or an early shower; the rest in the HCAL.
    mip = rng.random(len(calo_charged.pt)) < 0.5
    ecal_frac = np.where(mip, np.minimum(cfg.mip_energy / calo_charged.pt, 1.0), rng.beta(1.5, 3.0, len(mip)))
    ecal_from_charged = Particles(calo_charged.jet, ecal_frac * calo_charged.pt, calo_charged.eta, calo_charged.phi)
    hcal_from_charged = Particles(calo_charged.jet, (1 - ecal_frac) * calo_charged.pt, calo_charged.eta, calo_charged.phi)
    ecal_from_neutral = Particles(neutral.jet, 0.05 * neutral.pt, neutral.eta, neutral.phi)
    hcal_from_neutral = Particles(neutral.jet, 0.95 * neutral.pt, neutral.eta, neutral.phi)

    # Photons shower in the ECAL: 80 % in the hit crystal, 5 % in each of its 4 neighbours.
    spread = [Particles(photons.jet, 0.8 * photons.pt, photons.eta, photons.phi)]
    for d_eta, d_phi in ((PIXEL, 0.0), (-PIXEL, 0.0), (0.0, PIXEL), (0.0, -PIXEL)):
        spread.append(Particles(photons.jet, 0.05 * photons.pt, photons.eta + d_eta, photons.phi + d_phi))
    ecal_flat, ecal_e = _accumulate(Particles.concat([*spread, ecal_from_charged, ecal_from_neutral]), n, size)
    ecal_e = _smear(rng, ecal_e, cfg.ecal_stochastic, cfg.ecal_constant)
    ecal_pixels = _add_noise(rng, ecal_flat, ecal_e, n * size * size, cfg.ecal_noise, cfg.ecal_threshold)

    # HCAL: 5 x 5-crystal towers, smeared, noisy, zero-suppressed, then spread over 25 pixels.
    towers_per_side = size // TOWER
    hcal = Particles.concat([hcal_from_charged, hcal_from_neutral])
    row, col, inside = _pixel_index(hcal, size)
    tower = (hcal.jet[inside] * towers_per_side + row[inside] // TOWER) * towers_per_side + col[inside] // TOWER
    tower_flat, tower_e = _sum_duplicates(tower, hcal.pt[inside])
    tower_e = _smear(rng, tower_e, cfg.hcal_stochastic, cfg.hcal_constant)
    tower_flat, tower_e = _add_noise(rng, tower_flat, tower_e, n * towers_per_side**2, cfg.hcal_noise, cfg.hcal_threshold)
    jet_of, rest = np.divmod(tower_flat, towers_per_side**2)
    t_row, t_col = np.divmod(rest, towers_per_side)
    offset = np.arange(TOWER)
    pix_row = (t_row * TOWER)[:, None, None] + offset[None, :, None]  # (T, 5, 1)
    pix_col = (t_col * TOWER)[:, None, None] + offset[None, None, :]  # (T, 1, 5)
    hcal_flat = ((jet_of[:, None, None] * size + pix_row) * size + pix_col).reshape(-1)
    hcal_e = np.repeat(tower_e / (TOWER * TOWER), TOWER * TOWER)

    # Scatter the three sparse channels into one channels-last float32 array.
    images = np.zeros((n, size, size, 3), dtype=np.float32)
    flat_images = images.reshape(-1)
    for channel, (flat, value) in enumerate((track_pixels, ecal_pixels, (hcal_flat, hcal_e))):
        flat_images[flat * 3 + channel] = value
    return JetChunk(images, is_quark.astype(np.int64), pt.astype(np.float32), m0.astype(np.float32))


def simulate_jets(n_jets: int, seed: int, cfg: SimulateConfig, quark_fraction: float = 0.5, size: int = 125) -> Iterator[JetChunk]:
    """Yield simulated jets in chunks of :data:`CHUNK` (the last may be shorter), in order.

    Labels are an exact, shuffled quark fraction. Each chunk has its own child seed of ``seed``.
    """
    root = np.random.SeedSequence(seed)
    label_seed, *chunk_seeds = root.spawn(1 + (n_jets + CHUNK - 1) // CHUNK)
    is_quark = np.zeros(n_jets, dtype=bool)
    is_quark[: round(quark_fraction * n_jets)] = True
    np.random.default_rng(label_seed).shuffle(is_quark)
    for i in range(0, n_jets, CHUNK):
        yield simulate_chunk(np.random.default_rng(chunk_seeds[i // CHUNK]), is_quark[i : i + CHUNK], cfg, size)


def write_simulated_file(
    path: str | Path,
    n_jets: int,
    seed: int,
    cfg: SimulateConfig,
    labelled: bool,
    image_size: int = 125,
    progress: bool = True,
) -> Path:
    """Simulate ``n_jets`` and write them in the ML4SCI HDF5 layout, atomically.

    A labelled file holds ``y`` with equal numbers of quarks and gluons. An unlabelled pool holds
    no ``y``; its quark fraction is drawn from ``cfg.unlabelled_quark_fraction`` with the seed and
    is not stored anywhere, as for real unlabelled data.
    """
    from tqdm.auto import tqdm

    from e2essl.data.writers import H5JetWriter

    if labelled:
        quark_fraction = 0.5
    else:
        lo, hi = cfg.unlabelled_quark_fraction
        quark_fraction = float(np.random.default_rng([seed, 1]).uniform(lo, hi))
    attrs = {
        "producer": "e2essl simulate",
        "seed": seed,
        "channels": "Tracks,ECAL,HCAL",
        "label_convention": "y = 1 quark, y = 0 gluon" if labelled else "unlabelled",
    }
    size = image_size
    if size % TOWER:
        raise ValueError(f"image size {size} is not a multiple of {TOWER} (HCAL towers are 5 x 5 crystals)")
    with (
        H5JetWriter(path, n_jets, (size, size, 3), label_key="y" if labelled else None, attrs=attrs) as writer,
        tqdm(total=n_jets, unit="jet", desc=f"simulate {Path(path).name}", disable=not progress) as bar,
    ):
        for chunk in simulate_jets(n_jets, seed, cfg, quark_fraction, size):
            columns = {"pt": chunk.pt, "m0": chunk.m0}
            if labelled:
                columns["y"] = chunk.y
            writer.write(chunk.images, **columns)
            bar.update(len(chunk.y))
    return Path(path)
