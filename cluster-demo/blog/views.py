"""Pages (plain HTML and a little JavaScript) and the post form."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from .models import BlogUpdate


def live_blog(request: HttpRequest) -> HttpResponse:
    updates = [u.as_event() for u in BlogUpdate.objects.all()[:50]]
    return render(request, "blog/live_blog.html", {"host": settings.HOST, "updates": updates})


def post(request: HttpRequest) -> HttpResponse:
    """Save a post (text, optional image): the post_save handler does the rest."""
    if request.method != "POST":
        return JsonResponse({"error": "POST a text"}, status=405)
    text = request.POST.get("text", "").strip()
    if not text:
        return JsonResponse({"error": "empty post"}, status=400)
    update = BlogUpdate(text=text[:5000], posted_on=settings.HOST)
    image = request.FILES.get("image")
    if image is not None:
        update.image = image
    update.save()
    return JsonResponse({"id": update.pk})


def chat(request: HttpRequest) -> HttpResponse:
    return render(request, "blog/chat.html", {"host": settings.HOST})


def cluster(request: HttpRequest) -> HttpResponse:
    return render(request, "blog/cluster.html", {"host": settings.HOST})
