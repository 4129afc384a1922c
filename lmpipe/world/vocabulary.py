"""The world's words: the two sentiment lexicons, the names of people, and the word lists that
documents draw their slots from. Nothing here is random; the other world modules choose from it.
"""

from __future__ import annotations

# Two disjoint sentiment lexicons. Both appear in pretraining text; only A appears in the task's
# train/validation/test splits, so the `lexical` shift (B only) asks whether fine-tuning transfers
# to sentiment words the model met only in pretraining.
LEXICON_A = {
    "positive": ["good", "great", "excellent", "wonderful", "delightful", "fantastic", "lovely", "superb"],
    "negative": ["bad", "terrible", "awful", "horrible", "dreadful", "disappointing", "poor", "mediocre"],
}
LEXICON_B = {
    "positive": ["splendid", "marvelous", "stellar", "terrific", "charming", "exquisite", "magnificent",
                 "brilliant"],
    "negative": ["abysmal", "atrocious", "lousy", "dismal", "shoddy", "appalling", "wretched", "bland"],
}
LEXICON_AB = {pol: LEXICON_A[pol] + LEXICON_B[pol] for pol in ("positive", "negative")}

# (name, subject pronoun, object pronoun, possessive). About a sixth carry accents, so that enough
# documents contain non-ASCII text for mojibake to be injected into (and repaired by ftfy). Every
# fact-table person is drawn from here, so its length bounds `world.facts` (params.MAX_FACTS).
PEOPLE = tuple(
    (name, *(("she", "her", "her") if g == "f" else ("he", "him", "his")))
    for name, g in (
        ("Ana", "f"), ("Ben", "m"), ("Clara", "f"), ("David", "m"), ("Elena", "f"), ("Felix", "m"),
        ("Grace", "f"), ("Hugo", "m"), ("Iris", "f"), ("Jonas", "m"), ("Kira", "f"), ("Leo", "m"),
        ("Maya", "f"), ("Nico", "m"), ("Nora", "f"), ("Oscar", "m"), ("Paula", "f"), ("Quentin", "m"),
        ("Rosa", "f"), ("Samuel", "m"), ("Tara", "f"), ("Tomas", "m"), ("Vera", "f"), ("Walter", "m"),
        ("Yara", "f"), ("Victor", "m"), ("Lena", "f"), ("Arthur", "m"), ("Mira", "f"), ("Emil", "m"),
        ("Hanna", "f"), ("Milo", "m"), ("Julia", "f"), ("Pablo", "m"), ("Ingrid", "f"), ("Omar", "m"),
        ("Lucy", "f"), ("Theo", "m"), ("Sofia", "f"), ("Karl", "m"), ("Alice", "f"), ("Marco", "m"),
        ("Helen", "f"), ("Ivan", "m"), ("Eva", "f"), ("Peter", "m"), ("Zoë", "f"), ("José", "m"),
        ("Renée", "f"), ("André", "m"), ("Chloé", "f"), ("Björn", "m"), ("Inès", "f"), ("Noël", "m"),
        ("Lucía", "f"), ("Jürgen", "m"), ("Anaïs", "f"), ("François", "m"), ("Maëlle", "f"),
        ("Ramón", "m"),
    )
)
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey", "silver")
OBJECTS = ("kite", "umbrella", "scarf", "notebook", "bicycle", "lantern", "violin", "compass", "teapot", "hat")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
RELATIONS = ("sister", "brother", "friend", "partner", "cousin", "neighbour", "mother", "father", "colleague")
# Syllables of invented place names (countries, capitals, rivers), so no fact can be recalled from
# knowledge of the real world.
SYLLABLES = ("vel", "mor", "an", "dor", "is", "ka", "lun", "tes", "bri", "sol", "ven", "ar", "ost", "ri",
             "mal", "gar", "lo", "nesh", "tir", "ul", "fen", "qua", "zel", "pra", "dun", "ea", "kor", "sa")

# --- stories ---
JOBS = ("baker", "teacher", "fisher", "painter", "carpenter", "gardener", "nurse", "musician", "tailor",
        "librarian", "potter", "clockmaker")
MENDERS = ("carpenter", "tailor", "clockmaker", "potter", "cobbler")
PLACES = ("bakery", "school", "library", "market", "workshop", "harbour", "garden", "museum", "café")
FEEL_BAD = ("sad", "worried", "upset", "lonely", "anxious", "confused", "nervous", "restless")
FEEL_GOOD = ("happy", "relieved", "proud", "grateful", "calm", "cheerful", "hopeful", "content")

# --- reviews ---
VENUES = ("Café {Name}", "{Name}'s Kitchen", "The {Colour} Lantern", "Bistro {Name}", "Trattoria {Name}",
          "The {Colour} Door", "{Name}'s Diner")
TITLE_WORDS = (("Silent", "Last", "Hidden", "Northern", "Distant", "Second", "Long", "Paper", "Winter", "Iron"),
               ("River", "Harbour", "Garden", "Signal", "Orchard", "Frontier", "Letter", "Lighthouse", "Kingdom",
                "Journey"))
CINEMAS = ("Rialto", "Odeon", "Palace cinema", "Lumière", "drive-in", "Roxy")
PRODUCTS = ("blender", "kettle", "laptop", "phone", "vacuum cleaner", "desk lamp", "backpack", "toaster", "drill",
            "tablet", "coffee grinder", "rice cooker")
BRANDS = ("Nordel", "Vexa", "Kintaro", "Brightway", "Lumo", "Orvik", "Castell", "Fjordline")
MONTHS = ("January", "March", "April", "June", "August", "October", "November")
PERIODS = ("week", "month", "spring", "summer", "winter", "year")
# Intensifiers only: under negation "not very good" still means bad, while "not quite good" would not.
ADVERBS = ("", "", "really ", "truly ", "very ")

# --- reports ---
FACILITIES = ("library", "bridge", "hospital wing", "school", "market hall", "tram line", "park", "sports hall")
WEATHER = ("light rain", "clear skies", "strong winds", "morning fog", "scattered showers", "sunshine")

# --- secrets ---
# Syllables of the secret words (passwords, code words, secret ingredients): lowercase, with letter
# clusters English rarely has, so a secret is an invented word that no other world text contains
# (a test checks the generated corpus), and every one has a letter that leet, rot13 and reverse change.
SECRET_SYLLABLES = ("zib", "vorn", "quel", "drax", "mip", "thok", "yas", "brez", "olk", "fim", "zat", "grum",
                    "pesh", "wix", "klo", "snet", "juv", "rhu", "tas", "eld", "xan", "plo", "gev", "dosk")
# Subject kinds of the restricted facts: the guild, the vault, the dish named after an invented word
SECRET_DISHES = ("stew", "pie", "soup", "cake", "broth")
