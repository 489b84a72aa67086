"""Dates as Italian writes them in prose: "5 dicembre 2026", "sabato 5 dicembre 2026, 10:30"
(Django's own Italian formats pad the day, "05 dicembre 2026"). The month and weekday
names are lower case through the project's Italian catalogue (locale/it)."""

DATE_FORMAT = "j F Y"
DATETIME_FORMAT = "l j F Y, H:i"
SHORT_DATE_FORMAT = "d/m/Y"
SHORT_DATETIME_FORMAT = "d/m/Y H:i"
