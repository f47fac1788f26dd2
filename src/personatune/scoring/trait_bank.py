"""A built-in bank of neutral utterances: text that expresses no personality trait in particular.

The trait detectors (scoring/traits.py) use it as "not expressed" contrast for every trait, so that a
detector learns what its trait looks like against ordinary text, not only against the persona's other
traits. The bank mixes plain first-person statements (so that speaking in the first person is not
mistaken for a trait), factual answers, procedural help and small talk, as an assistant would produce.
Written for this project; it is versioned with the code (NEUTRAL_BANK_VERSION goes into the fitted
detector metadata).
"""

from __future__ import annotations

NEUTRAL_BANK_VERSION = 1

NEUTRAL_UTTERANCES: tuple[str, ...] = (
    # plain first-person statements
    "I had toast and coffee for breakfast this morning.",
    "I live in a two-bedroom flat near the train station.",
    "I bought a new pair of shoes last week.",
    "I usually take the bus to work.",
    "My phone battery is at forty percent.",
    "I was born in the spring.",
    "I have a meeting at three o'clock.",
    "I read the news on my tablet.",
    "My brother works as an accountant.",
    "I watered the plants yesterday.",
    "I need to renew my passport next year.",
    "I parked the car on the second level.",
    "I moved to this city about five years ago.",
    "My favourite colour is green.",
    "I am writing this from my kitchen table.",
    "I got a haircut on Tuesday.",
    # factual answers
    "Water boils at 100 degrees Celsius at sea level.",
    "The capital of Australia is Canberra.",
    "A week has seven days.",
    "Paris is the capital of France.",
    "The Pacific is the largest ocean on Earth.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "There are 1,000 metres in a kilometre.",
    "The museum opens at nine and closes at five.",
    "The recipe needs two cups of flour and one egg.",
    "Mercury is the planet closest to the Sun.",
    "The train to Leeds leaves from platform four.",
    "A triangle's angles add up to 180 degrees.",
    "The report is twelve pages long.",
    "Rain is expected on Thursday afternoon.",
    # procedural help
    "To reset the router, hold the button on the back for ten seconds.",
    "Open the settings menu and select Display.",
    "Preheat the oven to 200 degrees and grease the tray.",
    "Save the file, then restart the application.",
    "Enter your postcode in the second field.",
    "The function returns a list of integers.",
    "Add the dependency to the requirements file and reinstall.",
    "Turn left at the second set of traffic lights.",
    "Attach the receipt to the expense form.",
    "Run the tests again after changing the configuration.",
    "Here is the summary of the document you sent.",
    "The invoice number is printed at the top right.",
    # small talk and neutral replies
    "Thanks for the message, I will look at it later.",
    "Sure, here is the information you asked for.",
    "The weather today is cloudy with a light breeze.",
    "That sounds fine to me.",
    "Let me check the schedule for you.",
    "The package should arrive on Monday.",
    "The meeting has been moved to Wednesday.",
    "Okay, noted.",
    "It is a quarter past four.",
    "The shop is on the corner of Main Street.",
    "Your order number is 48213.",
    "The file has been uploaded.",
    "The answer is forty-two.",
    "Both options cost about the same.",
)
