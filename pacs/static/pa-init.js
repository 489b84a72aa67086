// Read by Bootstrap Italia's bundle as it loads (templates/pa_base.html puts this first):
// its video player (video.js, unused here) would otherwise inject <style> elements,
// which the Content-Security-Policy refuses (style-src 'self' and a nonce).
window.VIDEOJS_NO_DYNAMIC_STYLE = true;
