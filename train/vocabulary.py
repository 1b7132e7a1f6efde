"""The fillers of the text templates, in English and French: objects, colours, people, places,
days, foods, animals, facts, numbers. Each filler is a `types.SimpleNamespace` whose fields the
templates name ("{o.en_pl}", "{o.fr_the}"); French articles and elisions are worked out here once.
"""

from __future__ import annotations

from types import SimpleNamespace

from antiphon.train.numbers import number_words


def _table(fields: str, rows: str) -> list[SimpleNamespace]:
    names = fields.split()
    out = []
    for row in rows.strip().splitlines():
        values = [v.strip() for v in row.split(",")]
        assert len(values) == len(names), row
        out.append(SimpleNamespace(**dict(zip(names, values))))
    return out


def _french_articles(item: SimpleNamespace) -> SimpleNamespace:
    """Add fr_the (la pomme, l'horloge), fr_a (une pomme) and fr_my (ma pomme, mon horloge)."""
    vowel = item.fr[0] in "aeiouéèêh"
    feminine = item.g == "f"
    item.fr_the = f"l'{item.fr}" if vowel else ("la " if feminine else "le ") + item.fr
    item.fr_a = ("une " if feminine else "un ") + item.fr
    item.fr_my = ("ma " if feminine and not vowel else "mon ") + item.fr
    item.en_a = ("an " if item.en[0] in "aeiou" else "a ") + item.en
    return item


OBJECTS = [_french_articles(o) for o in _table("en en_pl fr fr_pl g", """
apple, apples, pomme, pommes, f
book, books, livre, livres, m
chair, chairs, chaise, chaises, f
car, cars, voiture, voitures, f
cup, cups, tasse, tasses, f
door, doors, porte, portes, f
hat, hats, chapeau, chapeaux, m
ball, balls, ballon, ballons, m
box, boxes, boîte, boîtes, f
pen, pens, stylo, stylos, m
shoe, shoes, chaussure, chaussures, f
bag, bags, sac, sacs, m
key, keys, clé, clés, f
lamp, lamps, lampe, lampes, f
bottle, bottles, bouteille, bouteilles, f
phone, phones, téléphone, téléphones, m
window, windows, fenêtre, fenêtres, f
bike, bikes, vélo, vélos, m
coat, coats, manteau, manteaux, m
flower, flowers, fleur, fleurs, f
clock, clocks, horloge, horloges, f
bed, beds, lit, lits, m
table, tables, table, tables, f
glass, glasses, verre, verres, m
shirt, shirts, chemise, chemises, f
""")]
COLOURS = _table("en fr_m fr_f", """
red, rouge, rouge
blue, bleu, bleue
green, vert, verte
black, noir, noire
white, blanc, blanche
yellow, jaune, jaune
grey, gris, grise
brown, marron, marron
orange, orange, orange
pink, rose, rose
""")

PEOPLE = _table("en fr", """
Alice, Alice
Paul, Paul
Marie, Marie
Thomas, Thomas
Emma, Emma
Louis, Louis
Julie, Julie
Marc, Marc
Claire, Claire
Hugo, Hugo
Sophie, Sophie
Lucas, Lucas
""")

# city, country, French "in the country", French "of the country".
PLACES = _table("en fr country_en country_fr fr_in fr_of", """
Paris, Paris, France, la France, en France, de la France
Berlin, Berlin, Germany, l'Allemagne, en Allemagne, de l'Allemagne
Rome, Rome, Italy, l'Italie, en Italie, de l'Italie
Madrid, Madrid, Spain, l'Espagne, en Espagne, de l'Espagne
Lisbon, Lisbonne, Portugal, le Portugal, au Portugal, du Portugal
Tokyo, Tokyo, Japan, le Japon, au Japon, du Japon
Ottawa, Ottawa, Canada, le Canada, au Canada, du Canada
London, Londres, England, l'Angleterre, en Angleterre, de l'Angleterre
Brussels, Bruxelles, Belgium, la Belgique, en Belgique, de la Belgique
Athens, Athènes, Greece, la Grèce, en Grèce, de la Grèce
Dublin, Dublin, Ireland, l'Irlande, en Irlande, de l'Irlande
Vienna, Vienne, Austria, l'Autriche, en Autriche, de l'Autriche
Oslo, Oslo, Norway, la Norvège, en Norvège, de la Norvège
Lima, Lima, Peru, le Pérou, au Pérou, du Pérou
Warsaw, Varsovie, Poland, la Pologne, en Pologne, de la Pologne
""")

DAYS = _table("en fr", """
Monday, lundi
Tuesday, mardi
Wednesday, mercredi
Thursday, jeudi
Friday, vendredi
Saturday, samedi
Sunday, dimanche
""")
for _i, _d in enumerate(DAYS):
    _d.next = DAYS[(_i + 1) % len(DAYS)]

FOODS = _table("en fr", """
bread, le pain
cheese, le fromage
apples, les pommes
chocolate, le chocolat
soup, la soupe
rice, le riz
coffee, le café
tea, le thé
fish, le poisson
pasta, les pâtes
oranges, les oranges
carrots, les carottes
""")

ANIMALS = [_french_articles(a) for a in _table("en fr g legs", """
dog, chien, m, 4
cat, chat, m, 4
bird, oiseau, m, 2
spider, araignée, f, 8
horse, cheval, m, 4
ant, fourmi, f, 6
duck, canard, m, 2
cow, vache, f, 4
chicken, poule, f, 2
bee, abeille, f, 6
""")]
for _a in ANIMALS:
    _a.legs_en, _a.legs_fr = number_words(int(_a.legs), "en"), number_words(int(_a.legs), "fr")

# Things with one well-known colour: the English phrase, the French phrase (alone and after "de"),
# the colour in both (the French one agreeing with the noun).
COLOUR_FACTS = _table("en fr fr_of colour_en colour_fr", """
the sky, le ciel, du ciel, blue, bleu
the grass, l'herbe, de l'herbe, green, verte
snow, la neige, de la neige, white, blanche
a banana, une banane, d'une banane, yellow, jaune
a tomato, une tomate, d'une tomate, red, rouge
coal, le charbon, du charbon, black, noir
milk, le lait, du lait, white, blanc
the sun, le soleil, du soleil, yellow, jaune
a strawberry, une fraise, d'une fraise, red, rouge
a carrot, une carotte, d'une carotte, orange, orange
""")


def numbers(low: int, high: int) -> list[SimpleNamespace]:
    """Numbers low..high as fillers with fields n, en, fr."""
    return [SimpleNamespace(n=n, en=number_words(n, "en"), fr=number_words(n, "fr")) for n in range(low, high + 1)]


HOURS = numbers(2, 12)
SMALL_NUMBERS = numbers(0, 12)
COUNTS = [n for n in numbers(2, 30) if n.n != 21]  # "vingt et un(e)" would need the noun's gender

BACKCHANNELS = {"en": ["mhm", "yeah", "okay", "right", "uh-huh", "I see"],
                "fr": ["mhm", "ouais", "d'accord", "oui", "ah bon", "je vois"]}
INTERRUPTIONS = {"en": ["Wait,", "Sorry,", "Hold on,", "Actually,", "No, wait,"],
                 "fr": ["Attends,", "Pardon,", "Attendez,", "En fait,", "Non, attends,"]}
