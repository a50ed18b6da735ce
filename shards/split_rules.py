"""The lexicon behind `shards.split`: abbreviations, sentence starters and their Punkt form.

Both engines of `split_caption` read the same `Lexicon`, so a word added through
`SplitterConfig` changes the fast rule engine and the nltk Punkt engine alike. Words are stored
the way Punkt stores its types: lower case, without the final period ("e.g", "u.s", "dr").

The abbreviations come in classes, because "is this period a sentence end?" has a different
answer for each (the rule engine in `shards.split` spells the decision out):

- never final: titles and Latin connectives ("Dr.", "Mr.", "e.g.", "vs.", "approx."), which are
  followed by the rest of their sentence, so a period after them never ends one;
- ordinary: "etc.", "Inc.", "U.S.", "St.", "Jr.", ... may end a sentence; they do when the next
  word is a known sentence starter ("... made in the U.S. The flag ...");
- final-prone: "etc.", "a.m.", "p.m." are followed by a lower-case word mid-sentence, so any
  capitalised word after them starts a new sentence;
- numbered: "No. 7", "Vol. 2", "p. 14": an abbreviation only when a number follows;
- units: "in.", "ft.", "oz." are abbreviations only after a number ("a 27 in. screen"),
  so that "a chair to sit in. Sunlight ..." still ends at "in.".

Titles, street and company forms and connectives of other languages are in the same classes
("Sra.", "Dott.", "Mme." never final; "Av.", "Pl.", "Cía." ordinary; "Nr." numbered; "z.B.",
"bzw." never final; "usw." final-prone), as is any word ending in "str." (a German street).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # nltk costs a second to import; only engine "punkt" needs it
    from nltk.tokenize.punkt import PunktParameters

NEVER_FINAL: frozenset[str] = frozenset(
    # titles, military ranks and name prefixes
    "mr mrs ms mx dr prof rev hon lt col gen capt cpt sgt cpl maj adm cmdr sen gov pres "
    "messrs mme mlle mt "
    # titles of other languages: Spanish, Portuguese, Italian, German, French
    "sra srta dña dn dott dott.ssa sig sig.ra sig.na avv ing fr mons "
    # connectives that always continue the sentence, English and others ("z.B." = "e.g.",
    # "bzw." = "or rather", "d.h." = "i.e.", "vgl." = "cf.")
    "e.g eg i.e ie vs v.s approx appr cf viz ca esp incl excl resp z.b bzw d.h u.a vgl".split()
)

ORDINARY: frozenset[str] = frozenset(
    # companies, names, places
    "inc ltd co corp bros jr sr st ave blvd rd ln hwy sq dept univ assn est al "
    # streets and companies of other languages ("Av. Paulista", "Pl. Mayor", "Cía.", "Ltda.");
    # German street names ending in "str." ("Hauptstr. 12") are handled by suffix
    "av avda pl pza pça str bd cía cia ltda "
    # dotted acronyms that also occur at a sentence end
    "u.s u.k u.n u.s.a e.u d.c n.y l.a u.a.e ph.d m.d b.a m.a b.c a.d r.i.p "
    # months (not "may", "mar" or day names, which are ordinary words too)
    "jan feb apr jun jul aug sep sept oct nov dec".split()
)

FINAL_PRONE: frozenset[str] = frozenset({"etc", "a.m", "p.m", "usw"})

NUMBERED: frozenset[str] = frozenset("no nos nr vol vols pp p fig figs ch sec art ex tel".split())

# A word ending in one of these is an abbreviation of its class ("Bahnhofstr." is a street).
STREET_SUFFIXES: tuple[str, ...] = ("str",)

# Only the units written with a period in running text (US style). Metric units and "mph" take
# none, so "25 mph. Cars ..." is two sentences like any "word. Capital".
UNITS: frozenset[str] = frozenset(
    "in ft yd yds mi oz lb lbs hr hrs min mins sec secs sq gal pt qt".split()
)

# Words that start the sentences of MLLM image descriptions. After an abbreviation they are the
# evidence that a new sentence begins (Punkt's frequent-sentence-starter heuristic). Stored in
# the case they take at a sentence start.
STARTERS: frozenset[str] = frozenset(
    """
    The A An This That These Those There Here It Its It's In On At To From With Without By For
    Of As Above Below Behind Beside Besides Beneath Under Underneath Over Near Next Nearby Around
    Along Alongside Across Against Among Between Beyond Inside Outside Within Throughout Toward
    Towards Atop Surrounding Overall Additionally Also Furthermore Moreover However Meanwhile
    Although Though While Whereas When Where If Because Since Despite Both Each Every All Some
    Several Many Most Few Other Another One Two Three Four Five Six Seven Eight Nine Ten Multiple
    Various His Her Their Our My He She They We You Someone Something Everything Nothing No Such
    Further Farther Finally First Firstly Second Secondly Third Lastly Then Together Perhaps
    Possibly Likely Notably Interestingly Visible Prominently Dominating Standing Sitting Lying
    Hanging Placed Positioned Located Situated Scattered Judging Given Based Due Apart Aside
    Adjacent Opposite Off Up Down Out Yes Closer
    """.split()
)


# Starters that as often continue a sentence after an abbreviation ("etc. to stay warm"): in
# lowercase output, where capitals give no evidence, they do not start one after "etc.".
WEAK_STARTERS: frozenset[str] = frozenset(
    """
    In On At To From With Without By For Of As Above Below Behind Beside Under Over Near Along
    Across Against Among Between Inside Outside Within Toward Towards Around
    """.split()
)


def _norm(words: Iterable[str]) -> frozenset[str]:
    """Punkt's form of an abbreviation: lower case, no final period."""
    return frozenset(w.strip().rstrip(".").lower() for w in words if w.strip().rstrip("."))


@dataclass(frozen=True)
class SplitterConfig:
    """User additions to the lexicon; the defaults are what `split_caption` uses.

    `extra_abbreviations` are ordinary abbreviations (a sentence ends after them only before a
    known starter), `extra_titles` never end a sentence ("Gen.", "Fr."), `extra_starters` are
    words that begin sentences ("Sunset"). Spellings are free: "Fr.", "fr" and "FR." are one.
    """

    extra_abbreviations: frozenset[str] = field(default_factory=frozenset)
    extra_titles: frozenset[str] = field(default_factory=frozenset)
    extra_starters: frozenset[str] = field(default_factory=frozenset)
    strip_markdown: bool = True  # drop `**bold**` markers and `#` heading marks

    def __post_init__(self) -> None:
        # Accept any iterable (a list, a set) and keep the dataclass hashable for the cache.
        object.__setattr__(self, "extra_abbreviations", _norm(self.extra_abbreviations))
        object.__setattr__(self, "extra_titles", _norm(self.extra_titles))
        starters = frozenset(w.strip() for w in self.extra_starters if w.strip())
        object.__setattr__(self, "extra_starters", starters)


DEFAULT_CONFIG = SplitterConfig()


@dataclass(frozen=True)
class Lexicon:
    """The word sets one configuration resolves to, shared by both engines."""

    never_final: frozenset[str]
    ordinary: frozenset[str]
    final_prone: frozenset[str]
    numbered: frozenset[str]
    units: frozenset[str]
    starters: frozenset[str]
    strip_markdown: bool

    @property
    def abbreviations(self) -> frozenset[str]:
        """Every abbreviation type, as Punkt's `abbrev_types` wants them."""
        return self.never_final | self.ordinary | self.final_prone | self.numbered | self.units

    def punkt_parameters(self) -> PunktParameters:
        """The lexicon as nltk `PunktParameters`, in place of a trained model.

        Starters get the orthographic context "seen capitalised at a sentence start and in lower
        case mid-sentence", which makes Punkt's orthographic heuristic call them sentence starts
        after an abbreviation, and keeps its initials heuristic ("J. R. Turner") from firing.
        """
        from nltk.tokenize.punkt import _ORTHO_BEG_UC, _ORTHO_MID_LC, PunktParameters

        params = PunktParameters()
        params.abbrev_types = set(self.abbreviations)
        params.sent_starters = {w.lower() for w in self.starters}
        for word in params.sent_starters:
            params.add_ortho_context(word, _ORTHO_BEG_UC | _ORTHO_MID_LC)
        return params


@lru_cache(maxsize=32)
def build_lexicon(config: SplitterConfig = DEFAULT_CONFIG) -> Lexicon:
    """Resolve a configuration to its word sets (cached: configurations are hashable)."""
    titles = NEVER_FINAL | config.extra_titles
    return Lexicon(
        never_final=titles,
        ordinary=(ORDINARY | config.extra_abbreviations) - titles,
        final_prone=FINAL_PRONE,
        numbered=NUMBERED,
        units=UNITS,
        starters=STARTERS | config.extra_starters,
        strip_markdown=config.strip_markdown,
    )
