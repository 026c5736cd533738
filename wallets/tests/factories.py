"""Factories for customers and their wallets."""

import factory

from wallets.models import Customer


class CustomerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Customer
        django_get_or_create = ("telegram_id",)

    telegram_id = factory.Sequence(lambda n: 7_000_000_000 + n)
    username = factory.Sequence(lambda n: f"user{n}")
