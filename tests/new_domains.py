"""Hand-written requests for new-domain discovery tests: a domain no demo agent covers, one they do, and noise."""

COOKING = (
    "How long should I bake a whole chicken in the oven?",
    "What can I use instead of eggs when baking a cake?",
    "How do I keep homemade bread from going stale?",
    "Why does my risotto turn out gluey?",
    "What is the best way to sear a steak in a cast iron pan?",
    "How much salt should I add to pasta water?",
    "Can I freeze cooked rice and reheat it later?",
    "How do I make a roux for gravy without lumps?",
    "What temperature should I fry chicken wings at?",
    "How do I stop pancakes from sticking to the pan?",
    "Which herbs go well with roast lamb?",
    "How do you caramelize onions properly?",
    "How long do I boil an egg for a runny yolk?",
    "Why did my cookies spread flat in the oven?",
    "How do I know when a roast chicken is cooked through?",
    "What is the difference between baking soda and baking powder in a recipe?",
    "How can I thicken a soup that is too watery?",
    "How do I make fluffy mashed potatoes?",
    "Can I use olive oil instead of butter when baking muffins?",
    "How long should pizza dough rise before baking?",
    "What is the best way to cook salmon fillets in the oven?",
    "How do I make a simple tomato sauce for pasta from scratch?",
    "Why is my homemade bread dense and heavy?",
    "How do I cook dried beans without soaking them overnight?",
)
"""Cooking questions: no demo agent (finance, legal, health, general) covers them."""

FINANCE = (
    "Which bank account is best for a small business?",
    "Should I pay off my student loan before investing in stocks?",
    "How are dividends from shares taxed?",
    "Can I roll my old 401k into an IRA without paying tax?",
    "When does refinancing a mortgage make sense?",
    "Are index funds safer than buying individual stocks?",
    "How much should I save for retirement each month?",
    "What happens if a cheque I deposited bounces?",
    "Can I deduct my home office from my taxes?",
    "How do I improve my credit score quickly?",
    "Is it better to lease or buy a car for my business?",
    "What are the fees for transferring money abroad from my bank?",
)
"""Finance questions: the demo finance agent's domain (a cluster of them must never become a new agent)."""

POOL_DOCUMENTS = {
    "cooking/bread.md": (
        "Baking bread at home. Knead the dough until it is smooth and elastic, then let it rise in a warm place "
        "until doubled, about an hour. A dense loaf usually means the dough did not rise long enough or the yeast "
        "was old. Bake at 220 C until the crust is deep brown and the loaf sounds hollow when tapped."
    ),
    "cooking/chicken.md": (
        "Roasting a whole chicken. Roast at 200 C for about 20 minutes per 500 g plus 20 minutes. The chicken is "
        "cooked through when the juices run clear and the thickest part of the thigh reaches 75 C. Rest the bird "
        "for ten minutes before carving so the juices settle."
    ),
    "astronomy/moons.md": (
        "Jupiter has at least 95 known moons. The four largest, Io, Europa, Ganymede and Callisto, were discovered "
        "by Galileo in 1610. Ganymede is the largest moon in the solar system, bigger than the planet Mercury."
    ),
}
"""Knowledge-pool documents: two match the cooking domain, one does not."""
